/**
 * The living map's upstreams against real HTTP servers started here: a healthy space-service, a
 * slow agents-service, a failing dao-service, a microdao-service answering garbage, and no
 * usage-engine. The snapshot tells the truth about each, never waits on them, keeps last-known
 * data marked stale, and the circuit breaker stops hammering the failing one.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestCity, waitFor, type TestCity } from "../helpers/city.ts";

describe("living map upstreams", () => {
  let spaceUp = true;
  /** Requests space-service refused while "down" (the outage test): the only failures it may have. */
  let spaceDownHits = 0;
  const hits = { space: 0, agents: 0, dao: 0, microdao: 0 };
  const space = Bun.serve({
    hostname: "127.0.0.1", port: 0,
    fetch(req) {
      hits.space++;
      if (!spaceUp) return (spaceDownHits++, new Response("down for maintenance", { status: 503 }));
      if (new URL(req.url).pathname !== "/api/space/scene") return new Response("no", { status: 404 });
      return Response.json({
        planets: [{ id: "daarion-core", name: "DAARION CORE", type: "dao", orbits: ["node:gpu-1"], status: "active" }, { name: "no id, skipped" }],
        nodes: [{ id: "gpu-1", name: "NODE1", cpu: 0.42, gpu: 0.77, memory: 0.63, alerts: [] }],
      });
    },
  });
  const agents = Bun.serve({
    hostname: "127.0.0.1", port: 0,
    async fetch() {
      hits.agents++;
      await Bun.sleep(3000);
      return Response.json([{ id: "sofia" }]);
    },
  });
  const dao = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => (hits.dao++, new Response("boom", { status: 500 })) });
  const microdao = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => (hits.microdao++, new Response("<html>not json</html>", { headers: { "content-type": "text/html" } })) });
  const url = (s: { port: number | undefined }) => `http://127.0.0.1:${s.port}`;
  let city: TestCity;
  let token: string;
  const snapshot = async () => (await (await city.http("/living-map/snapshot", { token })).json()) as any;
  const sources = async () => Object.fromEntries((await snapshot()).meta.sources.map((s: any) => [s.name, s]));

  beforeAll(async () => {
    city = await startTestCity({
      SPACE_SERVICE_URL: url(space), AGENTS_SERVICE_URL: url(agents), DAO_SERVICE_URL: url(dao), MICRODAO_SERVICE_URL: url(microdao),
      // The healthy space-service answers from this process's own event loop, which under a
      // parallel CI run on two cores once took over 200 ms (a "timed out" space-service failed the
      // first test); 2 s still times out the agents-service, which answers after 3 s. It also
      // checks that each upstream refreshes on its own: when every round waited for the slowest,
      // the agents-service's 2 s made the healthy one's data stale (its first test failed 3 of 3).
      LIVING_MAP_UPSTREAM_TIMEOUT_MS: "2000", LIVING_MAP_REFRESH_MS: "1000", LIVING_MAP_BREAKER_OPEN_MS: "3000",
    });
    token = await city.token("u_upstreams");
  });
  afterAll(async () => {
    await city.dispose();
    for (const s of [space, agents, dao, microdao]) s.stop(true);
  });

  test("meta.sources says what each upstream gave; the healthy one's data is on the map, nothing invented for the rest", async () => {
    // Every source tried, and space-service answering (in any order of the tests: after the outage
    // test it comes back once its breaker lets an attempt through).
    const all = await waitFor(sources, (x: any) => Object.values(x).every((v: any) => v.error !== "not fetched yet") && x["space-service"].status === "ok", 8000);
    expect(all["space-service"]).toMatchObject({ status: "ok", fetched_at: expect.any(String), error: "1 item(s) without an id skipped" });
    // Each failing source says why; once its breaker opens (after three failures: sooner when other
    // tests ran first) the reason is the open circuit. Either way nothing was ever fetched.
    expect(all["agents-service"]).toMatchObject({ status: "unavailable", fetched_at: null, error: expect.stringMatching(/^timed out$|circuit open/) });
    expect(all["dao-service"]).toMatchObject({ status: "unavailable", fetched_at: null, error: expect.stringMatching(/HTTP 500|circuit open/) });
    expect(all["microdao-service"]).toMatchObject({ status: "unavailable", fetched_at: null, error: expect.stringMatching(/not JSON|circuit open/) });
    expect(all["usage-engine"]).toEqual({ name: "usage-engine", status: "not_configured", fetched_at: null });
    expect(all["city-service"].status).toBe("ok");
    const snap = await snapshot();
    expect(snap.layers.space.planets).toEqual([{ id: "dao:daarion-core", name: "DAARION CORE", type: "dao", orbits: ["node:gpu-1"], status: "active" }]);
    expect(snap.layers.nodes.items[0]).toMatchObject({ id: "node:gpu-1", name: "NODE1", metrics: { cpu: 0.42, gpu: 0.77, ram: 0.63 } });
    expect(snap.layers.agents.items).toEqual([]);
    expect(snap.layers.city.items).toEqual([]);
    expect(snap.layers.city.health).toBe("yellow");
    const entity = (await (await city.http("/living-map/entities/node:gpu-1", { token })).json()) as any;
    expect(entity).toMatchObject({ id: "node:gpu-1", type: "node", layer: "nodes", data: { source: { id: "gpu-1", name: "NODE1" } } });
    // /metrics counts the reads by outcome; a source not configured has no series
    const metrics = await (await city.http("/metrics")).text();
    const count = (source: string, outcome: string) =>
      Number(new RegExp(`^daarion_city_living_map_upstream_fetches_total\\{source="${source}",outcome="${outcome}"\\} (\\d+)$`, "m").exec(metrics)?.[1] ?? -1);
    expect(count("space-service", "ok")).toBeGreaterThanOrEqual(1);
    // A healthy space-service is never counted as failed: failures only while the outage test took it down.
    expect(count("space-service", "failed")).toBeLessThanOrEqual(spaceDownHits);
    for (const failing of ["agents-service", "dao-service", "microdao-service"]) expect(count(failing, "failed")).toBeGreaterThanOrEqual(1);
    expect(metrics).not.toContain('source="usage-engine"');
  });

  test("a snapshot never waits on an upstream, even while one hangs", async () => {
    // An agents-service that holds every request until released, with an attempt timeout far
    // beyond the test: while its first request hangs, snapshots must still be answered. No clock in
    // the proof: the upstream cannot have answered, so nothing waited on it.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let received = 0;
    const hanging = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: async () => (received++, await gate, Response.json([{ id: "late" }])) });
    const held = await startTestCity({ AGENTS_SERVICE_URL: url(hanging), LIVING_MAP_UPSTREAM_TIMEOUT_MS: "60000", LIVING_MAP_REFRESH_MS: "1000" });
    try {
      const heldToken = await held.token("u_upstreams");
      await waitFor(() => received, (n) => n > 0);
      for (let i = 0; i < 30; i++) {
        const res = await held.http("/living-map/snapshot", { token: heldToken });
        expect(res.status).toBe(200);
        const agentsSource = ((await res.json()) as any).meta.sources.find((x: any) => x.name === "agents-service");
        expect(agentsSource.fetched_at).toBeNull();
      }
    } finally {
      release();
      await held.dispose();
      hanging.stop(true);
    }
  });

  test("an upstream that stops answering keeps its last data, marked stale with when it was fetched", async () => {
    // Its data first (this may be the file's first test, before the first refresh round is in).
    const fetchedAt = (await waitFor(sources, (x: any) => x["space-service"].status === "ok", 5000))["space-service"].fetched_at as string;
    spaceUp = false;
    try {
      const stale = (await waitFor(sources, (x: any) => x["space-service"].status === "stale", 5000))["space-service"];
      expect(stale.error).toContain("503");
      expect(Date.parse(stale.fetched_at)).toBeGreaterThanOrEqual(Date.parse(fetchedAt));
      expect((await snapshot()).layers.nodes.items.map((n: any) => n.id)).toEqual(["node:gpu-1"]);
    } finally {
      spaceUp = true; // the other tests need it healthy, whatever happened here
    }
    // back once its breaker lets an attempt through again (LIVING_MAP_BREAKER_OPEN_MS = 3 s here)
    await waitFor(sources, (x: any) => x["space-service"].status === "ok", 8000);
  });

  test("the circuit breaker stops calling an upstream that keeps failing", async () => {
    await waitFor(sources, (x: any) => /circuit open/.test(x["dao-service"].error ?? ""), 8000);
    const at = hits.dao;
    const rounds = () => city.livingMap.upstreamStats.get("space-service")!.ok;
    const from = rounds();
    // two more refresh rounds (every second; the healthy space-service answers once in each)
    // inside the 3 s the breaker stays open: no request reaches dao-service
    await waitFor(rounds, (n) => n >= from + 2, 8000);
    expect(hits.dao).toBeLessThanOrEqual(at + 1); // at most the one attempt a half-open breaker lets through
    expect(hits.dao).toBeLessThan(at + 4);
  });
});
