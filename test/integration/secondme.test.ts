/**
 * Second Me against a small Agents Core test server (HTTP) started here, and a responder on the
 * real NATS with a random subject prefix: success, slow agent, agent down, malformed replies,
 * concurrent invokes, history/profile/clear, limits, and the 503 with nothing configured.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type NatsConnection } from "nats";
import { engineUrl, randomSuffix } from "../helpers/engines.ts";
import { startTestCity, type TestCity } from "../helpers/city.ts";

/** An Agents Core stand-in whose behaviour the prompt chooses (its last line is the prompt). */
function agentsCore() {
  const requests: { path: string; body: any }[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      // The living map reads the same agents-service (GET /agents): not an invoke.
      if (req.method !== "POST") return new Response("not here", { status: 404 });
      const body = (await req.json()) as any;
      requests.push({ path: new URL(req.url).pathname, body });
      const prompt: string = body.input.split("\n").at(-1).replace(/^user: /, "");
      if (prompt.startsWith("slow")) await Bun.sleep(Number(prompt.split(" ")[1] ?? 1000));
      if (prompt === "malformed") return new Response("<html>oops</html>", { headers: { "content-type": "text/html" } });
      if (prompt === "empty") return Response.json({ reply: "   ", output: "" });
      if (prompt === "error500") return new Response("boom", { status: 500 });
      if (prompt === "output") return Response.json({ output: "from output", tokens_used: 11 });
      return Response.json({ reply: `answer to ${prompt}`, usage: { prompt_tokens: 3, completion_tokens: 4 } });
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, requests, stop: () => server.stop(true) };
}

/**
 * A TCP server that drops every connection once the request arrives, counting the POSTs (an agent
 * that is down; the living map's GETs on the same agents-service are not counted).
 */
function droppingServer() {
  let connections = 0;
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(s, d) {
        if (d.toString("latin1").startsWith("POST")) connections++;
        s.end();
      },
    },
  });
  return { url: `http://127.0.0.1:${l.port}`, connections: () => connections, stop: () => l.stop(true) };
}

describe("Second Me over HTTP", () => {
  const core = agentsCore();
  let city: TestCity;
  let alice: string;
  const invoke = (token: string | undefined, prompt: unknown) => city.http("/secondme/invoke", { method: "POST", token, json: { prompt } });
  const history = async (token: string, limit = 100) => (await (await city.http(`/secondme/history?limit=${limit}`, { token })).json()) as any[];

  beforeAll(async () => {
    // A timeout well above the 150 ms "slow" agent of the ordering test (a loaded machine adds to it),
    // well below the 1,500 ms one of the timeout test.
    city = await startTestCity({ AGENTS_SERVICE_URL: core.url, SECONDME_TIMEOUT_MS: "700", SECONDME_CONTEXT_MESSAGES: "4", SECONDME_RATE_PER_MINUTE: "0" });
    alice = await city.token("u_alice");
  });
  afterAll(async () => {
    await city.dispose();
    core.stop();
  });

  test("a reply comes back, is stored with its tokens, and the next prompt carries the conversation", async () => {
    const res = await invoke(alice, "  Як справи?  ");
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    expect(body.reply).toBe("answer to Як справи?");
    expect(body.history.map((h: any) => [h.role, h.content, h.status])).toEqual([
      ["user", "Як справи?", "answered"],
      ["assistant", "answer to Як справи?", "answered"],
    ]);
    expect(core.requests.at(-1)).toEqual({ path: "/agents/ag_secondme_global/invoke", body: { input: "Як справи?", context: { user_id: "u_alice", kind: "secondme" } } });
    await invoke(alice, "ще");
    expect(core.requests.at(-1)!.body.input).toBe("Previous conversation:\nuser: Як справи?\nassistant: answer to Як справи?\n\nuser: ще");
    const profile = (await (await city.http("/secondme/profile", { token: alice })).json()) as any;
    expect(profile).toMatchObject({ user_id: "u_alice", sessions: 1, messages: 4, total_tokens: 14 });
    expect(profile.avg_latency_ms).toBeGreaterThanOrEqual(0);
    expect(profile.last_interaction).toBe((await history(alice)).at(-1).created_at);
  });

  test("`output` and `tokens_used` are read when `reply` and `usage` are absent", async () => {
    const bob = await city.token("u_bob_out");
    const body = (await (await invoke(bob, "output")).json()) as any;
    expect(body.reply).toBe("from output");
    expect(((await (await city.http("/secondme/profile", { token: bob })).json()) as any).total_tokens).toBe(11);
  });

  test("a slow agent is a 504 after one attempt; the prompt is kept as unanswered and no reply is invented", async () => {
    const carol = await city.token("u_carol");
    const before = core.requests.length;
    const res = await invoke(carol, "slow 1500");
    expect(res.status).toBe(504);
    expect(((await res.json()) as any).error.code).toBe("agents_core_timeout");
    // Sentinel: another user's invoke, answered after the timeout; a retry would have gone first.
    expect((await invoke(await city.token("u_carol_sentinel"), "sentinel")).status).toBe(200);
    expect(core.requests.slice(before).filter((r) => r.body.context?.user_id === "u_carol").length).toBe(1);
    expect((await history(carol)).map((h) => [h.role, h.content, h.status])).toEqual([["user", "slow 1500", "unanswered"]]);
  });

  test("malformed, empty and failed answers are 502s with their own codes", async () => {
    const dave = await city.token("u_dave");
    for (const [prompt, code] of [["malformed", "bad_agent_reply"], ["empty", "bad_agent_reply"], ["error500", "agents_core_error"]] as const) {
      const res = await invoke(dave, prompt);
      expect({ prompt, status: res.status, code: ((await res.json()) as any).error.code }).toEqual({ prompt, status: 502, code });
    }
    const h = await history(dave);
    expect(h.map((x) => x.status)).toEqual(["unanswered", "unanswered", "unanswered"]);
    expect(h.every((x) => x.role === "user")).toBe(true);
  });

  test("concurrent invokes from one user keep the history in prompt/reply order", async () => {
    const erin = await city.token("u_erin");
    // the first is the slowest: without per-user ordering its reply would land last
    const results = await Promise.all([invoke(erin, "slow 150"), invoke(erin, "two"), invoke(erin, "three")]);
    expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
    // The three may reach the server in any order; each reply must directly follow its own prompt.
    const h = (await history(erin)).map((x) => `${x.role}:${x.content}`);
    expect(h.length).toBe(6);
    for (let i = 0; i < 6; i += 2) expect(h[i + 1]).toBe(`assistant:answer to ${h[i]!.slice("user:".length)}`);
    expect(h.filter((x) => x.startsWith("user:")).sort()).toEqual(["user:slow 150", "user:three", "user:two"]);
  });

  test("history pages with limit; clear deletes the conversation", async () => {
    const frank = await city.token("u_frank");
    for (const p of ["a", "b", "c"]) await invoke(frank, p);
    const res = await city.http("/secondme/history", { token: frank });
    // default limit: the last 5 of 6, oldest first
    expect(((await res.json()) as any[]).map((h) => h.content)).toEqual(["answer to a", "b", "answer to b", "c", "answer to c"]);
    expect((await history(frank, 2)).map((h) => h.content)).toEqual(["c", "answer to c"]);
    expect((await city.http("/secondme/history?limit=101", { token: frank })).status).toBe(400);
    const cleared = await city.http("/secondme/history/clear", { method: "POST", token: frank });
    expect(await cleared.json()).toEqual({ cleared: 6 });
    expect(await history(frank)).toEqual([]);
    expect(await (await city.http("/secondme/profile", { token: frank })).json()).toEqual({
      user_id: "u_frank", sessions: 0, messages: 0, total_tokens: 0, avg_latency_ms: null, last_interaction: null,
    });
  });

  test("bad input changes nothing: no token, a user_id in the body, an empty or 8,001-character prompt", async () => {
    const gina = await city.token("u_gina");
    expect((await invoke(undefined, "hi")).status).toBe(401);
    for (const path of ["/secondme/history", "/secondme/profile"]) expect((await city.http(path)).status).toBe(401);
    expect((await city.http("/secondme/history/clear", { method: "POST" })).status).toBe(401);
    const withUser = await city.http("/secondme/invoke", { method: "POST", token: gina, json: { prompt: "hi", user_id: "u_someone" } });
    expect(withUser.status).toBe(400);
    for (const prompt of ["", "   ", "x".repeat(8001), 42]) {
      const res = await invoke(gina, prompt);
      expect({ status: res.status, code: ((await res.json()) as any).error.code }).toEqual({ status: 400, code: "validation_failed" });
    }
    expect((await invoke(gina, "я".repeat(8000))).status).toBe(200);
    expect((await history(gina)).length).toBe(2);
  });
});

describe("Second Me: one retry on a connection error, none on a timeout", () => {
  test("an agent that drops connections is tried twice, then 502 agents_core_unreachable", async () => {
    const down = droppingServer();
    const city = await startTestCity({ AGENTS_SERVICE_URL: down.url, SECONDME_TIMEOUT_MS: "2000" });
    try {
      const token = await city.token("u_retry");
      const res = await city.http("/secondme/invoke", { method: "POST", token, json: { prompt: "hello?" } });
      expect(res.status).toBe(502);
      expect(((await res.json()) as any).error.code).toBe("agents_core_unreachable");
      expect(down.connections()).toBe(2);
      const h = (await (await city.http("/secondme/history", { token })).json()) as any[];
      expect(h).toEqual([{ role: "user", content: "hello?", created_at: h[0].created_at, status: "unanswered" }]);
    } finally {
      await city.dispose();
      down.stop();
    }
  });
});

describe("Second Me with nothing configured", () => {
  test("503 agents_core_not_configured; the prompt is kept as unanswered", async () => {
    const city = await startTestCity({});
    try {
      const token = await city.token("u_lonely");
      const res = await city.http("/secondme/invoke", { method: "POST", token, json: { prompt: "anyone?" } });
      expect(res.status).toBe(503);
      expect(((await res.json()) as any).error.code).toBe("agents_core_not_configured");
      expect(((await (await city.http("/secondme/history", { token })).json()) as any[]).map((h) => h.status)).toEqual(["unanswered"]);
    } finally {
      await city.dispose();
    }
  });

});

describe("Second Me rate limit", () => {
  test("per-user rate limit: 429 with Retry-After, and the refused prompt is not stored", async () => {
    const core = agentsCore();
    const city = await startTestCity({ AGENTS_SERVICE_URL: core.url, SECONDME_RATE_PER_MINUTE: "2" });
    try {
      const token = await city.token("u_busy");
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await city.http("/secondme/invoke", { method: "POST", token, json: { prompt: `p${i}` } })).status);
      expect(statuses).toEqual([200, 200, 429]);
      const res = await city.http("/secondme/invoke", { method: "POST", token, json: { prompt: "again" } });
      expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(((await (await city.http("/secondme/history?limit=100", { token })).json()) as any[]).length).toBe(4);
    } finally {
      await city.dispose();
      core.stop();
    }
  });
});

const natsUrl = engineUrl("NATS_URL", "Second Me over NATS request/reply");
describe.skipIf(!natsUrl)("Second Me over NATS request/reply", () => {
  const prefix = `t_${randomSuffix()}`;
  let nc: NatsConnection;
  let city: TestCity;
  const seen: any[] = [];
  beforeAll(async () => {
    nc = await connect({ servers: natsUrl! });
    nc.subscribe(`${prefix}.agents.invoke`, {
      callback: (_err, msg) => {
        const req = JSON.parse(msg.string());
        seen.push(req);
        const prompt: string = req.payload.input.split("\n").at(-1).replace(/^user: /, "");
        if (prompt === "silence") return; // never answers
        msg.respond(JSON.stringify({ event: "agents.reply", payload: { reply: `nats says ${prompt}`, usage: 5 } }));
      },
    });
    await nc.flush();
    city = await startTestCity({ NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix, AGENTS_TRANSPORT: "nats", SECONDME_TIMEOUT_MS: "300", SECONDME_AGENT_ID: "ag_test" });
  });
  afterAll(async () => {
    await city.dispose();
    await nc.drain();
  });

  test("the seed's agents.invoke request gets its reply", async () => {
    const token = await city.token("u_nats");
    const res = await city.http("/secondme/invoke", { method: "POST", token, json: { prompt: "hi over nats" } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as any).reply).toBe("nats says hi over nats");
    expect(seen.at(-1)).toEqual({ event: "agents.invoke", agent_id: "ag_test", payload: { input: "hi over nats", user_id: "u_nats", source: "secondme" } });
    expect(((await (await city.http("/secondme/profile", { token })).json()) as any).total_tokens).toBe(5);
  });

  test("no answer in time is a 504, sent once", async () => {
    const token = await city.token("u_nats_slow");
    const before = seen.length;
    const res = await city.http("/secondme/invoke", { method: "POST", token, json: { prompt: "silence" } });
    expect(res.status).toBe(504);
    expect(seen.length - before).toBe(1);
  });

  test("nobody listening on the subject is a 502 agents_core_unreachable", async () => {
    const lonely = await startTestCity({ NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: `${prefix}_nobody`, AGENTS_TRANSPORT: "nats" });
    try {
      const res = await lonely.http("/secondme/invoke", { method: "POST", token: await lonely.token("u_x"), json: { prompt: "hello" } });
      expect(res.status).toBe(502);
      expect(((await res.json()) as any).error.code).toBe("agents_core_unreachable");
    } finally {
      await lonely.dispose();
    }
  });
});
