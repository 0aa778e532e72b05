/**
 * Matrix presence folded into room presence (seed 003), end to end in-process: a fake homeserver,
 * two city instances on one Redis and one NATS. Matrix users reach `/ws/city/presence`,
 * `members_online` and NATS (`city.presence.room.<slug>`, `city.presence.user.<localpart>`);
 * people known both ways count once; typing replaces; admins map rooms (`PATCH /city/rooms/{id}`);
 * exactly one instance syncs and the other takes over when it stops.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type NatsConnection } from "nats";
import { signToken } from "../../src/auth/tokens.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { FakeHomeserver } from "../helpers/fake-homeserver.ts";
import { membersOnline, startTestCity, TEST_SECRET, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";

const redis = engineUrl("REDIS_URL", "Matrix presence");
const nats = engineUrl("NATS_URL", "Matrix presence");
const BOT = "@bot:city.test";
const GEN = "!gen:city.test";
const SCI = "!sci:city.test";
// Long enough that a loaded test machine does not lose it between two renewals (a takeover's full
// sync publishes every Matrix user's presence again, which the exactly-once checks would see).
const LEASE_MS = 2500;

interface Pair {
  hs: FakeHomeserver;
  a: TestCity;
  b: TestCity;
  /** Everything published on `city.presence.>` under the pair's subject prefix, subject without it. */
  published: { subject: string; data: any }[];
  leader(): TestCity | undefined;
  dispose(): Promise<void>;
}

/** A fake homeserver and two city instances on one Redis and NATS (own key and subject prefixes), one syncing. */
async function startPair(): Promise<Pair> {
  const keyPrefix = `t_${randomSuffix()}:`;
  const subjectPrefix = `t_${randomSuffix()}`;
  const hs = new FakeHomeserver().start();
  hs.addUser(BOT, { token: "bot-token" });
  hs.createRoom(GEN, "#city_general:city.test");
  hs.createRoom(SCI);
  hs.join(GEN, BOT);
  hs.join(SCI, BOT);
  const published: Pair["published"] = [];
  const nc: NatsConnection = await connect({ servers: nats! });
  nc.subscribe(`${subjectPrefix}.city.presence.>`, {
    callback: (_e, m) => published.push({ subject: m.subject.slice(subjectPrefix.length + 1), data: JSON.parse(m.string()) }),
  });
  await nc.flush();
  const env = {
    REDIS_URL: redis!, REDIS_KEY_PREFIX: keyPrefix, NATS_URL: nats!, NATS_SUBJECT_PREFIX: subjectPrefix, LIVING_MAP_JETSTREAM: "off",
    MATRIX_HS_URL: hs.url, MATRIX_ACCESS_TOKEN: "bot-token", MATRIX_USER_ID: BOT, MATRIX_ROOM_ALIAS_TEMPLATE: "#city_{slug}:city.test",
    MATRIX_SYNC_TIMEOUT_MS: "5000", MATRIX_LEASE_TTL_MS: String(LEASE_MS), PRESENCE_FLUSH_MS: "5", ROOM_PRESENCE_THROTTLE_MS: "300", TYPING_TTL_SECONDS: "20",
    CITY_ADMIN_USERS: "u_listed_admin", PRESENCE_TTL_SECONDS: "20",
  };
  const a = await startTestCity(env);
  const b = await startTestCity({}, { config: a.config });
  const leader = () => [a, b].find((c) => c.matrix!.isLeader());
  await waitFor(() => leader() !== undefined && leader()!.matrix!.report().state === "syncing", Boolean, 5000);
  return {
    hs, a, b, published, leader,
    dispose: async () => {
      await a.dispose();
      await b.dispose();
      await nc.close();
      hs.stop();
      await deleteRedisKeys(redis!, keyPrefix);
    },
  };
}

describe.skipIf(!redis || !nats)("Matrix presence across two instances (fake homeserver, Redis, NATS)", () => {
  let pair: Pair;
  let hs: FakeHomeserver;
  let a: TestCity;
  let b: TestCity;
  let published: Pair["published"] = [];
  const sockets: TestSocket[] = [];

  beforeAll(async () => {
    pair = await startPair();
    ({ hs, a, b, published } = pair);
  });

  afterAll(async () => {
    for (const s of sockets) s.close();
    await pair?.dispose();
  });

  const presenceSocket = async (city: TestCity, user: string) => {
    const s = await TestSocket.open(city.wsUrl(`/ws/city/presence?token=${await city.token(user)}`));
    sockets.push(s);
    await s.next((f) => f.type === "snapshot");
    return s;
  };

  test("exactly one instance syncs; the other reports the leader's state", async () => {
    expect([a, b].filter((c) => c.matrix!.isLeader()).length).toBe(1);
    const follower = [a, b].find((c) => !c.matrix!.isLeader())!;
    await waitFor(() => follower.matrix!.report().state, (s) => s === "following");
    const ready = (await (await follower.http("/readyz")).json()) as any;
    expect(ready.engines.matrix).toMatchObject({ engine: "matrix", state: "up" });
    expect(ready.matrix.leader).toBe(false);
  });

  test("a Matrix user coming online in a mapped room reaches the presence socket on both instances, members_online and NATS", async () => {
    const onA = await presenceSocket(a, "u_watch_a");
    const onB = await presenceSocket(b, "u_watch_b");
    const from = published.length;
    hs.join(GEN, "@alice:city.test");
    hs.setPresence("@alice:city.test", "online", 1000);
    for (const s of [onA, onB]) await s.next((f) => f.type === "room.presence" && f.room_slug === "general" && f.online_count === 1);
    expect(await membersOnline(a, "room_city_general")).toBe(1);
    expect(await membersOnline(b, "room_city_general")).toBe(1);
    const room = await waitFor(() => published.slice(from).find((p) => p.subject === "city.presence.room.general" && p.data.online_count === 1));
    expect(room!.data).toMatchObject({
      type: "room.presence", room_slug: "general", matrix_room_id: GEN, matrix_room_alias: "#city_general:city.test", online_count: 1,
      matrix_presence: "ok",
    });
    // Typing is the typing test's (it may have run first): here only its shape.
    expect(room!.data.typing_users.length).toBe(room!.data.typing_count);
    const user = await waitFor(() => published.slice(from).find((p) => p.subject === "city.presence.user.alice"));
    expect(user!.data).toEqual({ type: "user.presence", matrix_user_id: "@alice:city.test", status: "online", last_active_ts: expect.any(Number) });
    // Sentinel: a later change of someone else; by then any duplicate of alice's event would have arrived.
    hs.join(GEN, "@sentinel:city.test");
    hs.setPresence("@sentinel:city.test", "online");
    await waitFor(() => published.slice(from).some((p) => p.subject === "city.presence.user.sentinel"));
    // (on failure, the publications show whether a takeover's full sync sent the second one)
    expect(published.slice(from).filter((p) => p.subject === "city.presence.user.alice")).toEqual([{ subject: "city.presence.user.alice", data: user!.data }]);
  });

  test("a person with a room socket and a Matrix client counts once", async () => {
    const token = await a.token("u_both");
    const room = await TestSocket.open(a.wsUrl(`/ws/city/rooms/room_city_science?token=${token}`));
    sockets.push(room);
    const p = await presenceSocket(a, "u_both");
    p.send({ event: "presence.heartbeat", user_id: "u_both" });
    await waitFor(() => membersOnline(a, "room_city_science"), (n) => n === 1);
    // science maps through the template alias, which the directory does not know yet: map it by id.
    const admin = await signToken(TEST_SECRET, "u_root", 3600, { role: "admin" });
    const res = await a.http("/city/rooms/room_city_science", { method: "PATCH", token: admin, json: { matrix_room_id: SCI } });
    expect(res.status).toBe(200);
    hs.join(SCI, "@u_both:city.test");
    hs.join(SCI, "@carol:city.test");
    hs.setPresence("@u_both:city.test", "online");
    hs.setPresence("@carol:city.test", "online");
    await p.next((f) => f.type === "room.presence" && f.room_slug === "science" && f.online_count === 2);
    expect(await membersOnline(a, "room_city_science")).toBe(2);
    // b learns it from a's publication (asynchronously) and never counts u_both twice.
    await waitFor(() => membersOnline(b, "room_city_science"), (n) => n === 2);
    hs.join(SCI, "@sentinel2:city.test");
    hs.setPresence("@sentinel2:city.test", "online");
    await waitFor(() => membersOnline(b, "room_city_science"), (n) => n !== 2);
    expect(await membersOnline(b, "room_city_science")).toBe(3);
  });

  test("Matrix typing reaches NATS and the socket, and a shorter list replaces the old one at once", async () => {
    const s = await presenceSocket(b, "u_typing_watch");
    const from = published.length;
    hs.setTyping(GEN, ["@alice:city.test", "@sentinel:city.test"]);
    await s.next((f) => f.type === "room.presence" && f.room_slug === "general" && f.typing_count === 2);
    const ev = await waitFor(() => published.slice(from).find((p) => p.subject === "city.presence.room.general" && p.data.typing_count === 2));
    expect(ev!.data.typing_users).toEqual(["@alice:city.test", "@sentinel:city.test"]);
    const at = s.frames.length;
    hs.setTyping(GEN, ["@sentinel:city.test"]);
    // Within the throttle (300 ms), long before TYPING_TTL_SECONDS (20 s) would end alice's typing by itself.
    await s.next((f) => f.type === "room.presence" && f.room_slug === "general" && f.typing_count === 1, 2000, at);
  });

  test("PATCH /city/rooms/{id}: admins only (role claim or CITY_ADMIN_USERS); bad and duplicate mappings are refused and change nothing", async () => {
    const user = await a.token("u_plain");
    const listed = await a.token("u_listed_admin");
    const forbidden = await a.http("/city/rooms/room_city_builders", { method: "PATCH", token: user, json: { matrix_room_id: "!x:city.test" } });
    expect(forbidden.status).toBe(403);
    expect(((await forbidden.json()) as any).error.code).toBe("forbidden");
    const createWithMapping = await a.http("/city/rooms", { method: "POST", token: user, json: { name: "X", slug: `x${randomSuffix()}`, matrix_room_id: "!y:city.test" } });
    expect(createWithMapping.status).toBe(403);
    const bad = await a.http("/city/rooms/room_city_builders", { method: "PATCH", token: listed, json: { matrix_room_id: "not-a-room" } });
    expect(bad.status).toBe(400);
    // A Matrix room another city room maps to (made here, so the test passes alone).
    const takenId = `!taken${randomSuffix()}:city.test`;
    const holder = await a.http("/city/rooms", { method: "POST", token: listed, json: { name: "Holder", slug: `h${randomSuffix()}`, matrix_room_id: takenId } });
    expect(holder.status).toBe(201);
    const taken = await a.http("/city/rooms/room_city_builders", { method: "PATCH", token: listed, json: { matrix_room_id: takenId } });
    expect(taken.status).toBe(409);
    expect(((await taken.json()) as any).error.code).toBe("matrix_room_taken");
    const empty = await a.http("/city/rooms/room_city_builders", { method: "PATCH", token: listed, json: {} });
    expect(empty.status).toBe(400);
    const unknown = await a.http("/city/rooms/room_city_nope", { method: "PATCH", token: listed, json: { name: "N" } });
    expect(unknown.status).toBe(404);
    const detail = (await (await a.http("/city/rooms/room_city_builders")).json()) as any;
    expect([detail.room.matrix_room_id, detail.room.matrix_room_alias, detail.room.name]).toEqual([null, null, "Builders"]);
    const ok = await a.http("/city/rooms/room_city_builders", { method: "PATCH", token: listed, json: { name: "Builders Hall", matrix_room_alias: "#builders:city.test" } });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ id: "room_city_builders", name: "Builders Hall", matrix_room_alias: "#builders:city.test", matrix_room_id: null });
    const mappings = (await (await b.http("/internal/city/rooms")).json()) as any[];
    expect(mappings.find((r: any) => r.slug === "builders")).toEqual({ id: "room_city_builders", slug: "builders", matrix_room_id: null, matrix_room_alias: "#builders:city.test" });
    const slug = `mx${randomSuffix()}`;
    const created = await a.http("/city/rooms", { method: "POST", token: listed, json: { name: "Mapped", slug, matrix_room_id: "!mapped:city.test" } });
    expect(created.status).toBe(201);
    expect(((await created.json()) as any).matrix_room_id).toBe("!mapped:city.test");
  });
});

// The loop moving to the other instance stops one instance's Matrix service for good: a pair of its own.
describe.skipIf(!redis || !nats)("Matrix presence: the syncing instance stops", () => {
  let hs: FakeHomeserver;
  let a: TestCity;
  let b: TestCity;
  let pair: Pair;
  const leader = () => pair.leader();

  beforeAll(async () => {
    pair = await startPair();
    ({ hs, a, b } = pair);
  });

  afterAll(async () => {
    await pair?.dispose();
  });

  test("the leader stops: the other instance takes the loop over within 2× the lease TTL and resumes from the saved next_batch", async () => {
    // Two people online in a Matrix room of this test's own, mapped to a city room of its own.
    const matrixRoom = `!keep${randomSuffix()}:city.test`;
    hs.createRoom(matrixRoom);
    hs.join(matrixRoom, BOT);
    const slug = `keep${randomSuffix()}`;
    const admin = await a.token("u_listed_admin");
    expect((await a.http("/city/rooms", { method: "POST", token: admin, json: { name: "Keep", slug, matrix_room_id: matrixRoom } })).status).toBe(201);
    for (const who of ["@keep1:city.test", "@keep2:city.test"]) {
      hs.join(matrixRoom, who);
      hs.setPresence(who, "online");
    }
    await waitFor(() => membersOnline(a, `room_city_${slug}`), (n) => n === 2);
    const old = leader()!;
    const other = old === a ? b : a;
    const saved = await old.store.matrixSyncToken(BOT);
    expect(saved).not.toBeNull();
    const before = hs.syncQueries.length;
    const t0 = Date.now();
    await old.matrix!.close();
    await waitFor(() => other.matrix!.isLeader(), Boolean, 2 * LEASE_MS + 500);
    expect(Date.now() - t0).toBeLessThan(2 * LEASE_MS + 500);
    await waitFor(() => other.matrix!.report().state === "syncing");
    const first = hs.syncQueries.slice(before).find((q) => q.get("full_state") === "true" || !q.has("since"))!;
    expect(first.get("since")).not.toBeNull();
    // The people Matrix had online are online through the new leader, each once.
    await waitFor(() => membersOnline(other, `room_city_${slug}`), (n) => n === 2);
  });
});
