/**
 * One city across instances, end to end: three compiled binaries on one PostgreSQL, Redis and NATS
 * (SPEC "Realtime guarantees"). Senders on all three into one room; every receiver everywhere gets
 * every message once, in the same seq order; recovery on another instance; presence frames once;
 * SIGKILL of an instance under load; and a NATS outage of 10 s under load on the test's own
 * nats-server (a spare port), after which every socket has every message without reconnecting.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { binaryToken, compiledBinary, startBinary, stopBinary, type RunningBinary } from "../helpers/binary.ts";
import { ownNats } from "../helpers/own-engines.ts";
import { TestSocket, waitFor } from "../helpers/city.ts";
import { createTestDatabase, deleteLivingMapStream, deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";

const pg = engineUrl("DATABASE_URL", "three instances");
const redis = engineUrl("REDIS_URL", "three instances");
const nats = engineUrl("NATS_URL", "three instances");
const ready = Boolean(pg && redis && nats);
const work = mkdtempSync(path.join(tmpdir(), "dc-e2e-inst-"));
const SECRET = "e2e-instances-secret-0123456789-abcdef";
const ROOM = "room_city_general";
// Every describe's binaries keep their data under `work`, removed once all of them are done.
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Message frames a socket got, as seqs. */
const seqs = (s: TestSocket) => s.frames.filter((f) => f.event === "room.message").map((f) => f.message.seq as number);
/** Asserts a run of seqs is exactly from..to, each once, in order. */
const contiguous = (got: number[], from: number, to: number) => expect(got).toEqual(Array.from({ length: to - from + 1 }, (_, i) => from + i));

async function post(run: RunningBinary, token: string, body: string, room = ROOM): Promise<{ status: number; seq?: number }> {
  try {
    const res = await fetch(`${run.url}/city/rooms/${room}/messages`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ body }),
    });
    const j = (await res.json().catch(() => ({}))) as { seq?: number };
    return { status: res.status, seq: j.seq };
  } catch {
    return { status: 0 };
  }
}

async function lastSeq(run: RunningBinary): Promise<number> {
  const page = (await (await fetch(`${run.url}/city/rooms/${ROOM}/messages?limit=1`)).json()) as { seq: number }[];
  return page[0]?.seq ?? 0;
}

/**
 * Three binaries on one PostgreSQL, Redis and NATS (own database and prefixes), started before the
 * describe's tests and stopped after them; a describe of its own per destructive test.
 */
function useThreeInstances() {
  let drop: () => Promise<void> = async () => {};
  const prefix = `t_${randomSuffix()}`;
  let env: Record<string, string>;
  const runs: RunningBinary[] = [];
  const sockets: TestSocket[] = [];
  const open = async (run: RunningBinary, p: string) => {
    const s = await TestSocket.open(run.wsUrl + p);
    sockets.push(s);
    return s;
  };
  const tokens = new Map<string, string>();
  const token = (user: string) => {
    if (!tokens.has(user)) tokens.set(user, binaryToken(env, user));
    return tokens.get(user)!;
  };

  beforeAll(async () => {
    compiledBinary();
    const db = await createTestDatabase(pg!);
    drop = db.drop;
    env = {
      DATABASE_URL: db.url, REDIS_URL: redis!, REDIS_KEY_PREFIX: `${prefix}:`, NATS_URL: nats!, NATS_SUBJECT_PREFIX: prefix, JWT_SECRET: SECRET,
      CITY_WRITE_RATE_PER_SECOND: "0", PRESENCE_TTL_SECONDS: "3", PRESENCE_SWEEP_MS: "200", PRESENCE_FLUSH_MS: "5", ROOM_POSITION_CHECK_MS: "1000",
      SHUTDOWN_TIMEOUT_MS: "3000",
    };
    for (let i = 0; i < 3; i++) runs.push(await startBinary({ ...env, DATA_DIR: mkdtempSync(path.join(work, "data-")) }, work));
  }, 120_000);

  afterAll(async () => {
    for (const s of sockets) s.close();
    for (const r of runs) if (r.proc.exitCode === null && !r.proc.killed) await stopBinary(r);
    await drop();
    await deleteRedisKeys(redis!, `${prefix}:`);
    await deleteLivingMapStream(nats!, prefix);
  });

  return { runs, open, token };
}

describe.skipIf(!ready)("three instances on one PostgreSQL, Redis and NATS", () => {
  const { runs, open, token } = useThreeInstances();

  test("senders on all three: every receiver on every instance gets every message once, in the same seq order", async () => {
    const receivers = [];
    for (const run of runs) for (let k = 0; k < 2; k++) receivers.push(await open(run, `/ws/city/rooms/${ROOM}`));
    const senders = await Promise.all(runs.map((run, i) => open(run, `/ws/city/rooms/${ROOM}?token=${token(`u_sender${i}`)}`)));
    const start = (await lastSeq(runs[0]!)) + 1;
    const N = 150;
    for (let i = 0; i < N; i++) for (const [j, s] of senders.entries()) s.send({ event: "room.message.send", body: `s${j}-${i}` });
    const total = N * senders.length;
    for (const r of [...receivers, ...senders]) await r.until(() => seqs(r).length >= total, 15_000);
    const reference = receivers[0]!.frames.filter((f) => f.event === "room.message").map((f) => f.message.id);
    for (const r of [...receivers, ...senders]) {
      contiguous(seqs(r), start, start + total - 1);
      expect(r.frames.filter((f) => f.event === "room.message").map((f) => f.message.id)).toEqual(reference);
    }
    // each sender's own messages kept their order
    for (let j = 0; j < senders.length; j++) {
      const mine = receivers[0]!.frames.filter((f) => f.event === "room.message" && f.message.body.startsWith(`s${j}-`)).map((f) => f.message.body);
      expect(mine).toEqual(Array.from({ length: N }, (_, i) => `s${j}-${i}`));
    }
  }, 60_000);

  test("a receiver that leaves instance A and comes back on C with since misses nothing and repeats nothing", async () => {
    const [a, b, c] = runs as [RunningBinary, RunningBinary, RunningBinary];
    const onA = await open(a, `/ws/city/rooms/${ROOM}`);
    await post(b, token("u_w1"), "before");
    await onA.next((f) => f.event === "room.message" && f.message.body === "before", 5000);
    const last = seqs(onA).at(-1)!;
    onA.close();
    await onA.waitClosed();
    let writing = true;
    const writers = [b, c].map(async (run, i) => {
      let n = 0;
      while (writing && n < 60) await post(run, token(`u_w${i}`), `during ${i}.${n++}`);
    });
    await Bun.sleep(30);
    const onC = await open(c, `/ws/city/rooms/${ROOM}?since=${last}`);
    await Bun.sleep(200);
    writing = false;
    await Promise.all(writers);
    await post(a, token("u_w1"), "after");
    const end = await lastSeq(a);
    await onC.until(() => seqs(onC).at(-1) === end, 10_000);
    contiguous(seqs(onC), last + 1, end);
    expect(onC.frames.filter((f) => f.event === "error")).toEqual([]);
  }, 60_000);

  test("presence frames arrive once on every instance, whichever instances the user is on", async () => {
    const room = "room_city_science";
    const user = "u_everywhere";
    const watchers = await Promise.all(runs.map((r) => open(r, `/ws/city/rooms/${room}`)));
    const presenceWatchers = await Promise.all(runs.map((r, i) => open(r, `/ws/city/presence?token=${token(`u_pw${i}`)}`)));
    for (const p of presenceWatchers) await p.next((f) => f.type === "snapshot");
    // the user holds the room on A and B, and heartbeats on B and C
    const held = [await open(runs[0]!, `/ws/city/rooms/${room}?token=${token(user)}`), await open(runs[1]!, `/ws/city/rooms/${room}?token=${token(user)}`)];
    const beats = [await open(runs[1]!, `/ws/city/presence?token=${token(user)}`), await open(runs[2]!, `/ws/city/presence?token=${token(user)}`)];
    for (const b of beats) {
      await b.next((f) => f.type === "snapshot");
      b.send({ event: "presence.heartbeat", user_id: user });
    }
    const mine = (s: TestSocket, pred: (f: any) => boolean) => s.frames.filter((f) => f.user_id === user && pred(f));
    for (const w of watchers) await w.next((f) => f.event === "room.presence" && f.user_id === user && f.status === "online", 5000);
    for (const p of presenceWatchers) await p.next((f) => f.event === "presence.update" && f.user_id === user, 5000);
    for (const w of presenceWatchers) await w.next((f) => f.type === "room.presence" && f.room_slug === "science" && f.online_count >= 1, 5000);
    // now both holds go: one room.leave per watcher
    for (const h of held) h.close();
    for (const w of watchers) await w.next((f) => f.event === "room.leave" && f.user_id === user, 5000);
    // a sentinel through every instance's stream: whatever else was coming has arrived
    expect((await post(runs[0]!, token("u_sentinel"), "sentinel", room)).status).toBe(201);
    for (const w of watchers) await w.next((f) => f.event === "room.message" && f.message.body === "sentinel", 5000);
    const presenceOf = (w: TestSocket) => mine(w, (f) => f.event === "room.presence").map((f) => f.status);
    for (const w of watchers) {
      expect(mine(w, (f) => f.event === "room.join").length).toBe(1);
      expect(mine(w, (f) => f.event === "room.leave").length).toBe(1);
      // `online` for the join, and again for the user's online transition when it named this room
      // (a first heartbeat written in the same flush as the first hold names none); `offline` for
      // the leave. Each event once: every watcher, on whichever instance, sees the same frames.
      expect(presenceOf(w).filter((x) => x === "offline")).toEqual(["offline"]);
      expect([1, 2]).toContain(presenceOf(w).filter((x) => x === "online").length);
      expect(presenceOf(w)).toEqual(presenceOf(watchers[0]!));
    }
    for (const p of presenceWatchers) expect(mine(p, (f) => f.event === "presence.update")).toEqual([{ event: "presence.update", user_id: user, status: "online" }]);
  }, 60_000);
});

// Kills one of its three: instances of its own, so the other tests never meet a dead one.
describe.skipIf(!ready)("three instances: one killed", () => {
  const { runs, open, token } = useThreeInstances();

  test("SIGKILL of an instance under load loses no acknowledged message; its users go offline once, within the TTL", async () => {
    const victim = runs[1]!;
    const user = "u_on_victim";
    const watcher = await open(runs[0]!, `/ws/city/presence?token=${token("u_kill_watch")}`);
    await watcher.next((f) => f.type === "snapshot");
    const beat = await open(victim, `/ws/city/presence?token=${token(user)}`);
    await beat.next((f) => f.type === "snapshot");
    beat.send({ event: "presence.heartbeat", user_id: user });
    await watcher.next((f) => f.event === "presence.update" && f.user_id === user && f.status === "online", 5000);
    const acked: number[] = [];
    let writing = true;
    const writers = Array.from({ length: 4 }, async (_, i) => {
      while (writing) {
        const r = await post(victim, token(`u_load${i}`), `load ${i}`);
        if (r.status === 201) acked.push(r.seq!);
        else if (r.status === 0) return; // the process is gone
      }
    });
    // Kill it mid-stream, once enough writes were acknowledged (a count, not a time: a loaded machine is slower).
    await waitFor(() => acked.length, (n) => n > 20, 20_000);
    const killedAt = Date.now();
    victim.proc.kill("SIGKILL");
    await victim.proc.exited;
    writing = false;
    await Promise.all(writers);
    expect(acked.length).toBeGreaterThan(20);
    // every acknowledged message is in the store, as another instance reads it
    const stored = new Set<number>();
    let before: number | undefined;
    for (;;) {
      const q = before === undefined ? "limit=200" : `limit=200&before=${before}`;
      const page = (await (await fetch(`${runs[0]!.url}/city/rooms/${ROOM}/messages?${q}`)).json()) as { seq: number }[];
      for (const m of page) stored.add(m.seq);
      if (page.length < 200 || page[0]!.seq <= Math.min(...acked)) break;
      before = page[0]!.seq;
    }
    expect(acked.filter((s) => !stored.has(s))).toEqual([]);
    const offline = await watcher.next((f) => f.event === "presence.update" && f.user_id === user && f.status === "offline", 8000);
    expect(offline).toBeTruthy();
    expect(Date.now() - killedAt).toBeLessThan(3000 + 200 + 1500);
    await Bun.sleep(500);
    expect(watcher.frames.filter((f) => f.event === "presence.update" && f.user_id === user).map((f) => f.status)).toEqual(["online", "offline"]);
  }, 60_000);
});

describe.skipIf(!pg || !redis)("a NATS outage under load", () => {
  test("10 s without NATS: writes go on, and once it is back every socket on the other instance has every message, in order", async () => {
    const db = await createTestDatabase(pg!);
    const prefix = `t_${randomSuffix()}`;
    const natsServer = await ownNats();
    const env = {
      DATABASE_URL: db.url, REDIS_URL: redis!, REDIS_KEY_PREFIX: `${prefix}:`, NATS_URL: natsServer.url, JWT_SECRET: SECRET,
      CITY_WRITE_RATE_PER_SECOND: "0", ROOM_POSITION_CHECK_MS: "1000",
    };
    const work = mkdtempSync(path.join(tmpdir(), "dc-e2e-outage-"));
    const [a, b] = [await startBinary({ ...env, DATA_DIR: mkdtempSync(path.join(work, "d-")) }, work), await startBinary({ ...env, DATA_DIR: mkdtempSync(path.join(work, "d-")) }, work)];
    const receivers: TestSocket[] = [];
    try {
      for (let i = 0; i < 3; i++) receivers.push(await TestSocket.open(`${b.wsUrl}/ws/city/rooms/${ROOM}`));
      const t = binaryToken(env, "u_outage");
      const start = (await lastSeq(a)) + 1;
      const acked: number[] = [];
      let writing = true;
      let outage = false;
      let ackedInOutage = 0;
      const writer = (async () => {
        while (writing) {
          const r = await post(a, t, "through the outage");
          if (r.status === 201) {
            acked.push(r.seq!);
            if (outage) ackedInOutage++;
          }
          await Bun.sleep(20);
        }
      })();
      await Bun.sleep(1000);
      await natsServer.stop();
      outage = true;
      await Bun.sleep(10_000);
      outage = false;
      await natsServer.start();
      await Bun.sleep(1500);
      writing = false;
      await writer;
      const end = Math.max(...acked);
      // Writes went on without NATS (how many depends on the machine's load: at least one every 0.5 s).
      expect(ackedInOutage).toBeGreaterThan(20);
      for (const r of receivers) {
        await r.until(() => seqs(r).at(-1) === end, 15_000);
        contiguous(seqs(r), start, end);
        expect(r.closed).toBeNull();
      }
    } finally {
      for (const r of receivers) r.close();
      await stopBinary(a);
      await stopBinary(b);
      await natsServer.dispose();
      await db.drop();
      await deleteRedisKeys(redis!, `${prefix}:`);
    }
  }, 90_000);
});
