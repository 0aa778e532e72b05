/**
 * Two app instances on one Redis (and one broker): each presence transition is seen exactly once
 * by every observer, and both instances report the same room counts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ManualClock } from "../../src/clock.ts";
import { MemoryBroker, MemoryNetwork } from "../../src/engine/broker/memory.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { advanceSweeping, heartbeatWritten, heartbeating, membersOnline, serverRead, startTestCity, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";

const redis = engineUrl("REDIS_URL", "presence across instances");
const nats = process.env.NATS_URL;

/**
 * Two instances on one Redis (its own key prefix) and one broker (NATS with its own subject prefix
 * when NATS_URL is set, else a memory network), started before and stopped after the suite.
 */
function pairOnRedis(extra: Record<string, string>, clock?: ManualClock) {
  const prefix = `t_${randomSuffix()}:`;
  const natsPrefix = `t_${randomSuffix()}`;
  const env = { REDIS_URL: redis!, REDIS_KEY_PREFIX: prefix, ...extra, ...(nats ? { NATS_URL: nats, NATS_SUBJECT_PREFIX: natsPrefix } : {}) };
  const p = { a: null as unknown as TestCity, b: null as unknown as TestCity, natsPrefix, sockets: [] as TestSocket[] };
  beforeAll(async () => {
    const network = new MemoryNetwork();
    const time = clock ? { clock, scheduler: clock } : {};
    p.a = await startTestCity(env, { ...time, ...(nats ? {} : { broker: new MemoryBroker(network) }) });
    p.b = await startTestCity({}, { ...time, config: p.a.config, ...(nats ? {} : { broker: new MemoryBroker(network) }) });
  });
  afterAll(async () => {
    for (const s of p.sockets) s.close();
    await p.a.dispose();
    await p.b.dispose();
    await deleteRedisKeys(redis!, prefix);
  });
  return { ...p, get a() { return p.a; }, get b() { return p.b; }, track: (s: TestSocket) => (p.sockets.push(s), s) };
}

describe.skipIf(!redis)(`presence across two instances on one Redis (broker: ${nats ? "nats" : "memory network"})`, () => {
  // Fake time, shared by both instances: flushes and sweeps run when the test says so; Redis and
  // the broker are real and the test waits for what they deliver.
  const clock = new ManualClock(Date.now());
  const TTL_MS = 2000;
  const SWEEP_MS = 100;
  const pair = pairOnRedis({ PRESENCE_TTL_SECONDS: String(TTL_MS / 1000), PRESENCE_SWEEP_MS: String(SWEEP_MS), PRESENCE_FLUSH_MS: "5" }, clock);
  const track = pair.track;
  let a: TestCity;
  let b: TestCity;
  beforeAll(() => {
    ({ a, b } = pair);
  });
  /** A socket of `userId` on `city` that has beaten, with the beat written. */
  const beating = async (city: TestCity, userId: string) => track(await heartbeatWritten(city, userId));
  const advance = (ms: number) => advanceSweeping(clock, [a, b], ms, SWEEP_MS);

  test("a user heartbeating on both instances goes online once and offline once, as every observer sees it", async () => {
    const onA = await beating(a, "u_obs_a");
    const onB = await beating(b, "u_obs_b");
    await a.broker.flush();
    await b.broker.flush();
    const viaA = await beating(a, "u_twice");
    const viaB = await beating(b, "u_twice");
    for (const obs of [onA, onB]) await obs.next((f) => f.event === "presence.update" && f.user_id === "u_twice" && f.status === "online");
    // beating on both for longer than the TTL: online stays
    for (let i = 0; i < 3; i++) {
      await advance(TTL_MS * 0.35);
      for (const [s, city] of [[viaA, a], [viaB, b]] as const) {
        s.send({ event: "presence.heartbeat", user_id: "u_twice" });
        await serverRead(s);
        await city.presence.flush();
      }
    }
    expect(await a.presence.isOnline("u_twice")).toBe(true);
    // stopped on both: offline at the first sweep after the TTL
    await advance(TTL_MS + 2 * SWEEP_MS);
    for (const obs of [onA, onB]) await obs.next((f) => f.event === "presence.update" && f.user_id === "u_twice" && f.status === "offline");
    // exactly once: more sweeps on both, then a later user on each instance. Whatever either
    // instance sent about u_twice reached each observer before that instance's later user did.
    await advance(TTL_MS);
    await beating(a, "u_later_a");
    await beating(b, "u_later_b");
    for (const obs of [onA, onB]) {
      for (const later of ["u_later_a", "u_later_b"]) await obs.next((f) => f.event === "presence.update" && f.user_id === later && f.status === "online");
      expect(obs.frames.filter((f) => f.event === "presence.update" && f.user_id === "u_twice").map((f) => f.status)).toEqual(["online", "offline"]);
    }
  });

  test("one user connected to each instance: both instances report the same room counts", async () => {
    await beating(a, "u_left");
    await beating(b, "u_right");
    for (const [city, user] of [[a, "u_left"], [b, "u_right"]] as const) {
      const room = track(await TestSocket.open(city.wsUrl(`/ws/city/rooms/room_city_general?token=${await city.token(user)}`)));
      await serverRead(room);
      await city.presence.flush();
    }
    expect(await waitFor(() => membersOnline(a, "room_city_general"), (n) => n === 2)).toBe(2);
    expect(await waitFor(() => membersOnline(b, "room_city_general"), (n) => n === 2)).toBe(2);
    const snapA = await track(await TestSocket.open(a.wsUrl(`/ws/city/presence?token=${await a.token("u_look")}`))).next((f) => f.type === "snapshot");
    const snapB = await track(await TestSocket.open(b.wsUrl(`/ws/city/presence?token=${await b.token("u_look")}`))).next((f) => f.type === "snapshot");
    const general = (snap: any) => snap.rooms.find((r: any) => r.room_slug === "general");
    expect(general(snapA)).toEqual({ room_slug: "general", online_count: 2, typing_count: 0 });
    expect(general(snapB)).toEqual(general(snapA));
    expect(await a.presence.roomMembers("room_city_general")).toEqual(["u_left", "u_right"]);
  });
});

describe.skipIf(!redis)("two instances on one Redis: counts at the write, one budget per user", () => {
  // A sweep far away: whatever arrives quickly was sent by the write that caused it.
  const pair = pairOnRedis({
    PRESENCE_SWEEP_MS: "10000", PRESENCE_FLUSH_MS: "5", ROOM_PRESENCE_THROTTLE_MS: "0", CITY_WRITE_RATE_PER_SECOND: "1", CITY_WRITE_BURST: "3",
  });
  const { natsPrefix, track } = pair;
  let a: TestCity;
  let b: TestCity;
  beforeAll(() => {
    ({ a, b } = pair);
  });

  test("a count change on one instance reaches the other's presence sockets at once, not at the next sweep", async () => {
    const observer = track(await heartbeating(a, "u_count_obs"));
    const user = track(await heartbeating(b, "u_count_user"));
    await user.next((f) => f.type === "snapshot");
    const t0 = Date.now();
    track(await TestSocket.open(b.wsUrl(`/ws/city/rooms/room_city_energy?token=${await b.token("u_count_user")}`)));
    const frame = await observer.next((f) => f.type === "room.presence" && f.room_slug === "energy" && f.online_count === 1, 2000);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(frame).toEqual({ type: "room.presence", room_slug: "energy", online_count: 1, typing_count: 0 });
    expect(await membersOnline(a, "room_city_energy")).toBe(1);
  });

  test.skipIf(!nats)("city.presence.room.<slug> carries seed 003 §4.1's payload with a growing version", async () => {
    const { connect } = await import("nats");
    const nc = await connect({ servers: nats! });
    const got: any[] = [];
    const sub = nc.subscribe(`${natsPrefix}.city.presence.room.builders`, { callback: (_e, m) => got.push(m.json()) });
    await nc.flush();
    try {
      const beat = track(await heartbeating(a, "u_nats_shape"));
      await beat.next((f) => f.type === "snapshot");
      track(await TestSocket.open(a.wsUrl(`/ws/city/rooms/room_city_builders?token=${await a.token("u_nats_shape")}`)));
      const end = Date.now() + 3000;
      while (!got.some((e) => e.online_count === 1) && Date.now() < end) await Bun.sleep(20);
      const e = got.find((x) => x.online_count === 1);
      expect(Object.keys(e).sort()).toEqual(
        ["connected_count", "last_event_ts", "matrix_room_alias", "matrix_room_id", "online_count", "room_slug", "type", "typing_count", "typing_users", "version"].sort(),
      );
      expect(e).toMatchObject({ type: "room.presence", room_slug: "builders", matrix_room_id: null, matrix_room_alias: null, online_count: 1, typing_count: 0, typing_users: [] });
      const versions = got.map((x) => x.version);
      expect(versions).toEqual([...versions].sort((x, y) => x - y));
    } finally {
      sub.unsubscribe();
      await nc.close();
    }
  });

  test("a user's write budget is shared: writes spread over both instances stop at the burst", async () => {
    const t = await a.token("u_budget");
    const post = (c: TestCity) => c.http("/city/rooms/room_city_general/messages", { method: "POST", token: t, json: { body: "budget" } });
    const statuses = [(await post(a)).status, (await post(b)).status, (await post(a)).status];
    expect(statuses).toEqual([201, 201, 201]);
    const over = await post(b);
    expect(over.status).toBe(429);
    expect(Number(over.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    // HTTP join/leave draw on the same budget
    expect((await b.http("/city/rooms/room_city_general/join", { method: "POST", token: t })).status).toBe(429);
  });
});
