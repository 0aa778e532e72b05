/**
 * The compiled executable, end to end: built once, started from an unrelated working directory,
 * driven over real HTTP and sockets, stopped with SIGTERM, restarted. On PostgreSQL (when
 * DATABASE_URL is set) and on the embedded default.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { binaryToken, compiledBinary, startBinary, stopBinary, type RunningBinary } from "../helpers/binary.ts";
import { createTestSchema, deleteLivingMapStream, deleteRedisKeys, engineUrl } from "../helpers/engines.ts";
import { TestSocket } from "../helpers/city.ts";

const work = mkdtempSync(path.join(tmpdir(), "dc-e2e-"));
let binary = "";

beforeAll(() => {
  binary = compiledBinary();
}, 120_000);
afterAll(() => rmSync(work, { recursive: true, force: true }));

const start = (env: Record<string, string>) => startBinary(env, work);
const stop = (r: RunningBinary) => stopBinary(r);
const token = binaryToken;

const pg = engineUrl("DATABASE_URL", "compiled binary on postgres");
const variants: { name: string; env: () => Promise<{ env: Record<string, string>; drop: () => Promise<void> }> }[] = [
  { name: "embedded default", env: async () => ({ env: { DATA_DIR: mkdtempSync(path.join(work, "data-")) }, drop: async () => {} }) },
];
if (pg) {
  variants.push({
    name: "postgres",
    env: async () => {
      const db = await createTestSchema(pg);
      return { env: { DATABASE_URL: db.url, JWT_SECRET: "e2e-secret-0123456789-abcdefghijklmnopq", DATA_DIR: mkdtempSync(path.join(work, "data-")) }, drop: db.drop };
    },
  });
}

for (const v of variants) {
  describe(`compiled binary (${v.name})`, () => {
    test("serves the default rooms, fans a message out between sockets, drains on SIGTERM and keeps the message across a restart", async () => {
      const { env, drop } = await v.env();
      try {
        const first = await start(env);
        const rooms = (await (await fetch(`${first.url}/city/rooms`)).json()) as any[];
        expect(rooms.map((r) => r.slug)).toEqual(["general", "welcome", "builders", "science", "energy"]);

        const alice = token(env, "u_alice");
        const ws = first.url.replace("http", "ws");
        const sender = await TestSocket.open(`${ws}/ws/city/rooms/room_city_general?token=${alice}`);
        const receiver = await TestSocket.open(`${ws}/ws/city/rooms/room_city_general`);
        sender.send({ event: "room.message.send", room_id: "room_city_general", body: "e2e привіт" });
        const got = await receiver.next((f) => f.event === "room.message");
        expect(got).toMatchObject({ room_id: "room_city_general", message: { body: "e2e привіт", author_user_id: "u_alice" } });

        const stopped = await stop(first);
        expect(stopped.code).toBe(0);
        expect(stopped.ms).toBeLessThan(10_000);
        expect((await receiver.waitClosed()).code).toBe(1001);
        expect((await sender.waitClosed()).code).toBe(1001);

        const second = await start(env);
        try {
          const detail = (await (await fetch(`${second.url}/city/rooms/room_city_general`)).json()) as any;
          expect(detail.messages.map((m: any) => m.id)).toContain(got.message.id);
          expect(detail.messages.filter((m: any) => m.author_user_id === null).length).toBe(1);
          // the token from before the restart is still valid (same secret)
          const res = await fetch(`${second.url}/city/rooms/room_city_general/messages`, {
            method: "POST",
            headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" },
            body: JSON.stringify({ body: "after restart" }),
          });
          expect(res.status).toBe(201);
        } finally {
          expect((await stop(second)).code).toBe(0);
        }
      } finally {
        await drop();
      }
    }, 60_000);
  });
}

describe("compiled binary: command line", () => {
  test("a bad setting stops the start with one line naming it and exit 3", () => {
    const out = Bun.spawnSync([binary, "serve"], { env: { PATH: process.env.PATH ?? "", PORT: "x" }, stdout: "pipe", stderr: "pipe" });
    expect(out.exitCode).toBe(3);
    expect(out.stderr.toString().trim()).toBe('config: PORT must be an integer in 0..65535, got "x"');
    const env = { PATH: process.env.PATH ?? "", DATA_DIR: mkdtempSync(path.join(work, "bad-")), PORT: "0", HOST: "127.0.0.1" };
    const db = Bun.spawnSync([binary, "serve"], { env: { ...env, DATABASE_URL: "postgres://me:hunter2@127.0.0.1:1/city" }, stdout: "pipe", stderr: "pipe" });
    expect(db.exitCode).toBe(3);
    expect(db.stderr.toString().trim()).toBe("DATABASE_URL: cannot connect to 127.0.0.1:1 (ECONNREFUSED)");
    const nats = Bun.spawnSync([binary, "serve"], { env: { ...env, NATS_URL: "nats://127.0.0.1:1" }, stdout: "pipe", stderr: "pipe" });
    expect(nats.exitCode).toBe(3);
    expect(nats.stderr.toString().trim()).toBe("NATS_URL: cannot connect to 127.0.0.1:1 (CONNECTION_REFUSED)");
    const dir = Bun.spawnSync([binary, "serve"], { env: { ...env, DATA_DIR: "/proc/no-such-dir" }, stdout: "pipe", stderr: "pipe" });
    expect(dir.exitCode).toBe(3);
    expect(dir.stderr.toString()).toStartWith("DATA_DIR: cannot use /proc/no-such-dir:");
  });

  test("token warns when the server beside it verifies with another secret, and not when it is the same; healthcheck reads it", async () => {
    const data = mkdtempSync(path.join(work, "tok-"));
    const run = await startBinary({ DATA_DIR: data, LOG_LEVEL: "info" }, work);
    try {
      const port = new URL(run.url).port;
      const base = { PATH: process.env.PATH ?? "", HOST: "127.0.0.1", PORT: port };
      const same = Bun.spawnSync([binary, "token", "u_alice"], { env: { ...base, DATA_DIR: data }, stdout: "pipe", stderr: "pipe" });
      expect(same.exitCode).toBe(0);
      expect(same.stderr.toString()).toBe("");
      const other = Bun.spawnSync([binary, "token", "u_alice"], { env: { ...base, DATA_DIR: mkdtempSync(path.join(work, "tok-other-")) }, stdout: "pipe", stderr: "pipe" });
      expect(other.exitCode).toBe(0);
      expect(other.stdout.toString().trim().split(".")).toHaveLength(3);
      expect(other.stderr.toString()).toContain(`the server at http://127.0.0.1:${port} verifies with another one`);
      const res = await fetch(`${run.url}/city/rooms/room_city_general/messages`, {
        method: "POST", headers: { authorization: `Bearer ${other.stdout.toString().trim()}`, "content-type": "application/json" }, body: JSON.stringify({ body: "x" }),
      });
      expect(res.status).toBe(401);
      // `healthcheck` (the Dockerfile's) reads /readyz of the same server: 0 while it runs.
      const health = Bun.spawnSync([binary, "healthcheck"], { env: { ...base, DATA_DIR: data }, stdout: "pipe", stderr: "pipe" });
      expect([health.exitCode, health.stdout.toString().trim()]).toEqual([0, "healthcheck: ready"]);
    } finally {
      await stopBinary(run);
    }
  });

  test("migrate applies once, then reports up to date", () => {
    const env = { PATH: process.env.PATH ?? "", DATA_DIR: mkdtempSync(path.join(work, "mig-")) };
    const first = Bun.spawnSync([binary, "migrate"], { env, stdout: "pipe", stderr: "pipe" });
    expect(first.stdout.toString().trim()).toBe("migrate: applied 0001_city, 0002_secondme_status, 0003_room_seq, 0004_health, 0005_living_map, 0006_matrix on sqlite");
    const second = Bun.spawnSync([binary, "migrate"], { env, stdout: "pipe", stderr: "pipe" });
    expect(second.stdout.toString().trim()).toBe("migrate: sqlite is up to date");
  });

  test("an unknown command or a bad token request is a usage error (exit 2)", () => {
    const env = { PATH: process.env.PATH ?? "", DATA_DIR: mkdtempSync(path.join(work, "cli-")) };
    expect(Bun.spawnSync([binary, "fly"], { env, stderr: "pipe" }).exitCode).toBe(2);
    expect(Bun.spawnSync([binary, "token"], { env, stderr: "pipe" }).exitCode).toBe(2);
    const bad = Bun.spawnSync([binary, "token", "alice"], { env, stderr: "pipe" });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr.toString()).toContain("user id must match");
    // Nothing listens on port 1: the health check fails with 1 (a run-time failure, not usage).
    expect(Bun.spawnSync([binary, "healthcheck"], { env: { ...env, HOST: "127.0.0.1", PORT: "1" }, stderr: "pipe" }).exitCode).toBe(1);
  });
});

const redisUrl = engineUrl("REDIS_URL", "compiled binary with presence on Redis");
describe.skipIf(!redisUrl)("compiled binary: presence on Redis", () => {
  const prefix = `t_${Math.random().toString(36).slice(2, 8)}:`;
  afterAll(() => deleteRedisKeys(redisUrl!, prefix));
  const presenceEnv = (extra: Record<string, string> = {}) => ({
    DATA_DIR: mkdtempSync(path.join(work, "data-")), JWT_SECRET: "e2e-secret-0123456789-abcdefghijklmnopq", REDIS_URL: redisUrl!, REDIS_KEY_PREFIX: prefix, ...extra,
  });

  test("a heartbeat sets presence:user:<id> with a TTL of 30–40 s and another client sees presence.update online", async () => {
    const env = presenceEnv();
    const run = await start(env);
    try {
      const ws = run.url.replace("http", "ws");
      const observer = await TestSocket.open(`${ws}/ws/city/presence?token=${token(env, "u_watch")}`);
      await observer.next((f) => f.type === "snapshot");
      const beater = await TestSocket.open(`${ws}/ws/city/presence?token=${token(env, "u_e2e")}`);
      await beater.next((f) => f.type === "snapshot");
      beater.send({ event: "presence.heartbeat", user_id: "u_e2e" });
      expect(await observer.next((f) => f.event === "presence.update" && f.user_id === "u_e2e")).toEqual({ event: "presence.update", user_id: "u_e2e", status: "online" });
      const { createClient } = await import("redis");
      const c = createClient({ url: redisUrl! });
      await c.connect();
      try {
        expect(await c.get(`${prefix}presence:user:u_e2e`)).toBe("online");
        const ttl = await c.ttl(`${prefix}presence:user:u_e2e`);
        expect(ttl).toBeGreaterThanOrEqual(30);
        expect(ttl).toBeLessThanOrEqual(40);
      } finally {
        await c.close();
      }
    } finally {
      expect((await stop(run)).code).toBe(0);
    }
  }, 30_000);

  test("after heartbeats stop, the other client sees offline exactly once", async () => {
    const env = presenceEnv({ PRESENCE_TTL_SECONDS: "3" });
    const run = await start(env);
    try {
      const ws = run.url.replace("http", "ws");
      const observer = await TestSocket.open(`${ws}/ws/city/presence?token=${token(env, "u_watch2")}`);
      await observer.next((f) => f.type === "snapshot");
      const beater = await TestSocket.open(`${ws}/ws/city/presence?token=${token(env, "u_leaver")}`);
      await beater.next((f) => f.type === "snapshot");
      beater.send({ event: "presence.heartbeat", user_id: "u_leaver" });
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_leaver" && f.status === "online");
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_leaver" && f.status === "offline", 3000 + 5000);
      // nothing more for u_leaver: a later user's online comes after whatever was sent before it
      const later = await TestSocket.open(`${ws}/ws/city/presence?token=${token(env, "u_later")}`);
      await later.next((f) => f.type === "snapshot");
      later.send({ event: "presence.heartbeat", user_id: "u_later" });
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_later" && f.status === "online");
      later.close();
      expect(observer.frames.filter((f) => f.event === "presence.update" && f.user_id === "u_leaver").map((f) => f.status)).toEqual(["online", "offline"]);
    } finally {
      expect((await stop(run)).code).toBe(0);
    }
  }, 30_000);

  test("two binaries on one Redis, one user connected to each: both report the same room counts", async () => {
    const shared = { NATS_URL: process.env.NATS_URL ?? "", NATS_SUBJECT_PREFIX: `t_${Math.random().toString(36).slice(2, 8)}`, PRESENCE_SWEEP_MS: "200" };
    const envA = presenceEnv(shared);
    const envB = presenceEnv(shared);
    const [a, b] = [await start(envA), await start(envB)];
    const opened: TestSocket[] = [];
    try {
      for (const [run, env, user] of [[a, envA, "u_on_a"], [b, envB, "u_on_b"]] as const) {
        const ws = run.url.replace("http", "ws");
        const p = await TestSocket.open(`${ws}/ws/city/presence?token=${token(env, user)}`);
        await p.next((f) => f.type === "snapshot");
        p.send({ event: "presence.heartbeat", user_id: user });
        opened.push(p, await TestSocket.open(`${ws}/ws/city/rooms/room_city_general?token=${token(env, user)}`));
      }
      const count = async (url: string) => ((await (await fetch(`${url}/city/rooms`)).json()) as any[]).find((r) => r.id === "room_city_general").members_online;
      const end = Date.now() + 5000;
      while ((await count(a.url)) !== 2 || (await count(b.url)) !== 2) {
        if (Date.now() > end) break;
        await Bun.sleep(100);
      }
      expect([await count(a.url), await count(b.url)]).toEqual([2, 2]);
    } finally {
      for (const s of opened) s.close();
      expect((await stop(a)).code).toBe(0);
      expect((await stop(b)).code).toBe(0);
      if (shared.NATS_URL) await deleteLivingMapStream(shared.NATS_URL, shared.NATS_SUBJECT_PREFIX);
    }
  }, 30_000);
});

describe("compiled binary: Second Me", () => {
  test("with AGENTS_SERVICE_URL set, invoke returns the agent's reply and history shows it", async () => {
    const agent = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req) {
        if (req.method !== "POST") return new Response("not here", { status: 404 }); // the living map's GET /agents
        const body = (await req.json()) as { input: string; context: { user_id: string } };
        return Response.json({ reply: `Привіт, ${body.context.user_id}: ${body.input}` });
      },
    });
    const env = { DATA_DIR: mkdtempSync(path.join(work, "data-")), AGENTS_SERVICE_URL: `http://127.0.0.1:${agent.port}` };
    const run = await start(env);
    try {
      const auth = { authorization: `Bearer ${token(env, "u_me")}`, "content-type": "application/json" };
      const res = await fetch(`${run.url}/secondme/invoke`, { method: "POST", headers: auth, body: JSON.stringify({ prompt: "хто я?" }) });
      expect(res.status).toBe(200);
      expect(((await res.json()) as any).reply).toBe("Привіт, u_me: хто я?");
      const history = (await (await fetch(`${run.url}/secondme/history`, { headers: auth })).json()) as any[];
      expect(history.map((h) => [h.role, h.content])).toEqual([
        ["user", "хто я?"],
        ["assistant", "Привіт, u_me: хто я?"],
      ]);
    } finally {
      expect((await stop(run)).code).toBe(0);
      agent.stop(true);
    }
  }, 30_000);
});
