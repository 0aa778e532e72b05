/**
 * The presence socket against a real server, on in-process presence and (when REDIS_URL is set)
 * on Redis: snapshot, transitions, heartbeat rules, throttled room counts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ManualClock } from "../../src/clock.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { advanceSweeping, heartbeatWritten, heartbeating, refusedUpgrade, serverRead, startTestCity, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";

const redis = engineUrl("REDIS_URL", "presence socket on redis");
const variants: { name: string; env: Record<string, string> }[] = [{ name: "in-process", env: {} }];
if (redis) variants.push({ name: "redis", env: { REDIS_URL: redis, REDIS_KEY_PREFIX: `t_${randomSuffix()}:` } });

for (const v of variants) {
  describe(`presence socket (${v.name})`, () => {
    let city: TestCity;
    // Fake time: flushes, sweeps and the room-count throttle run when the test says so. Real I/O
    // (sockets, Redis) still runs on its own; the test waits for what it causes.
    const clock = new ManualClock(Date.now());
    const TTL_MS = 2000;
    const SWEEP_MS = 100;
    const THROTTLE_MS = 600;
    const sockets: TestSocket[] = [];
    const track = (s: TestSocket) => (sockets.push(s), s);
    /** A presence socket for `userId` whose heartbeat has been written. */
    const online = async (userId: string) => track(await heartbeatWritten(city, userId));
    /** A room socket whose hold has been written. */
    const inRoom = async (roomId: string, userId: string) => {
      const s = track(await TestSocket.open(city.wsUrl(`/ws/city/rooms/${roomId}?token=${await city.token(userId)}`)));
      await serverRead(s);
      await city.presence.flush();
      return s;
    };
    const advance = (ms: number) => advanceSweeping(clock, [city], ms, SWEEP_MS);
    beforeAll(async () => {
      city = await startTestCity(
        { ...v.env, PRESENCE_TTL_SECONDS: String(TTL_MS / 1000), PRESENCE_SWEEP_MS: String(SWEEP_MS), PRESENCE_FLUSH_MS: "5", ROOM_PRESENCE_THROTTLE_MS: String(THROTTLE_MS), TYPING_TTL_SECONDS: "5" },
        { clock, scheduler: clock },
      );
    });
    afterAll(async () => {
      for (const s of sockets) s.close();
      await city.dispose();
      if (v.env.REDIS_KEY_PREFIX) await deleteRedisKeys(redis!, v.env.REDIS_KEY_PREFIX);
    });

    test("the first frame is the seed-003 snapshot of every room", async () => {
      const s = track(await TestSocket.open(city.wsUrl(`/ws/city/presence?token=${await city.token("u_snap")}`)));
      const snap = await s.next(() => true);
      expect(snap.type).toBe("snapshot");
      expect(snap.rooms.map((r: any) => r.room_slug).sort()).toEqual(["builders", "energy", "general", "science", "welcome"]);
      expect(snap.rooms.find((r: any) => r.room_slug === "general")).toEqual({ room_slug: "general", online_count: 0, typing_count: 0 });
    });

    test("a heartbeat is seen as presence.update online by another client; offline once after the TTL", async () => {
      const observer = await online("u_observer");
      const alice = await online("u_alice1");
      expect(await observer.next((f) => f.event === "presence.update" && f.user_id === "u_alice1")).toEqual({ event: "presence.update", user_id: "u_alice1", status: "online" });
      // keep beating for longer than the TTL: still one online, no offline
      for (let i = 0; i < 3; i++) {
        await advance(TTL_MS * 0.4);
        alice.send({ event: "presence.heartbeat", user_id: "u_alice1" });
        await serverRead(alice);
        await city.presence.flush();
      }
      const mine = () => observer.frames.filter((f) => f.event === "presence.update" && f.user_id === "u_alice1");
      // the observer's own heartbeat stopped long ago; everything it was sent before this user's online came first
      await online("u_sentinel1");
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_sentinel1");
      expect(mine()).toEqual([{ event: "presence.update", user_id: "u_alice1", status: "online" }]);
      expect(await city.presence.isOnline("u_alice1")).toBe(true);
      // stop: offline at the first sweep after the TTL
      await advance(TTL_MS - SWEEP_MS);
      expect(await city.presence.isOnline("u_alice1")).toBe(true);
      await advance(2 * SWEEP_MS);
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_alice1" && f.status === "offline");
      expect(await city.presence.isOnline("u_alice1")).toBe(false);
      // exactly once: more sweeps, then a later frame on the same socket
      await advance(TTL_MS);
      const from = observer.frames.length;
      await online("u_sentinel2");
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_sentinel2", 3000, from);
      expect(mine().map((f) => f.status)).toEqual(["online", "offline"]);
    });

    test("a heartbeat counts in any JSON form: compact, spaced, keys reordered, or without user_id", async () => {
      const forms = [
        (u: string) => JSON.stringify({ event: "presence.heartbeat", user_id: u }),
        (u: string) => `{ "user_id" : "${u}", "event" : "presence.heartbeat" }`,
        () => JSON.stringify({ event: "presence.heartbeat" }),
        () => `{"event": "presence.heartbeat"}`,
      ];
      for (const [i, form] of forms.entries()) {
        const user = `u_form${i}`;
        const s = track(await TestSocket.open(city.wsUrl(`/ws/city/presence?token=${await city.token(user)}`)));
        await s.next((f) => f.type === "snapshot");
        s.ws.send(form(user));
        await serverRead(s);
        await city.presence.flush();
        expect(await city.presence.isOnline(user)).toBe(true);
        expect(s.frames.filter((f) => f.event === "error" && f.code !== "invalid_frame")).toEqual([]);
      }
    });

    test("a heartbeat for another user gets user_mismatch and is ignored; bad frames get error frames", async () => {
      const s = track(await heartbeating(city, "u_honest"));
      s.send({ event: "presence.heartbeat", user_id: "u_someone_else" });
      expect((await s.next((f) => f.event === "error")).code).toBe("user_mismatch");
      await city.presence.flush();
      expect(await city.presence.isOnline("u_someone_else")).toBe(false);
      for (const [frame, code] of [["nope", "invalid_frame"], [{ event: "room.message.send" }, "unknown_event"]] as const) {
        const from = s.frames.length;
        s.send(frame);
        expect((await s.next((f) => f.event === "error", 3000, from)).code).toBe(code);
      }
      expect(s.closed).toBeNull();
    });

    test("?events=counts gets the snapshot and counts but no presence.update; a bad value is refused", async () => {
      const countsOnly = track(await TestSocket.open(city.wsUrl(`/ws/city/presence?events=counts&token=${await city.token("u_counts_only")}`)));
      expect((await countsOnly.next(() => true)).type).toBe("snapshot");
      const full = await online("u_full_observer");
      await online("u_newcomer");
      await full.next((f) => f.event === "presence.update" && f.user_id === "u_newcomer");
      await inRoom("room_city_builders", "u_newcomer");
      await countsOnly.next((f) => f.type === "room.presence" && f.room_slug === "builders" && f.online_count === 1);
      expect(countsOnly.frames.filter((f) => f.event === "presence.update")).toEqual([]);
      expect(await refusedUpgrade(`${city.url}/ws/city/presence?events=everything&token=${await city.token("u_x")}`)).toMatchObject({ status: 400 });
    });

    test("the presence socket needs a valid token", async () => {
      expect(await refusedUpgrade(`${city.url}/ws/city/presence`)).toMatchObject({ status: 401, body: { error: { code: "unauthorized" } } });
      expect(await refusedUpgrade(`${city.url}/ws/city/presence?token=bad`)).toMatchObject({ status: 401 });
    });

    test("room counts: online changes go out at once, typing-only changes at most once per throttle window", async () => {
      const observer = await online("u_counts_observer");
      const energy = () => observer.frames.filter((f) => f.type === "room.presence" && f.room_slug === "energy");
      await online("u_counter");
      const room = await inRoom("room_city_energy", "u_counter");
      // the online count changed: out at once, without time moving
      const first = await observer.next((f) => f.type === "room.presence" && f.room_slug === "energy" && f.online_count === 1);
      expect(first).toEqual({ type: "room.presence", room_slug: "energy", online_count: 1, typing_count: 0 });
      const at = energy().length;
      room.send({ event: "room.typing", room_id: "room_city_energy" });
      await serverRead(room);
      await city.presence.flush();
      // typing alone changed and the last frame went out 0 ms ago: it waits for the window
      await advance(THROTTLE_MS - 1);
      await online("u_sentinel3");
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_sentinel3");
      expect(energy().length).toBe(at);
      await advance(1);
      const typing = await observer.next((f) => f.type === "room.presence" && f.room_slug === "energy" && f.typing_count === 1);
      expect(typing).toEqual({ type: "room.presence", room_slug: "energy", online_count: 1, typing_count: 1 });
      expect(energy().length).toBe(at + 1);
      room.close();
      await room.waitClosed();
      await city.presence.flush();
      const gone = await observer.next((f) => f.type === "room.presence" && f.room_slug === "energy" && f.online_count === 0);
      expect(gone.typing_count).toBe(1);
    });
  });
}

describe("presence.update storm guard", () => {
  test("above PRESENCE_UPDATES_MAX_AUDIENCE listening sockets, presence.update is not sent; counts still are", async () => {
    const city = await startTestCity({ PRESENCE_UPDATES_MAX_AUDIENCE: "2", PRESENCE_SWEEP_MS: "100", PRESENCE_FLUSH_MS: "5" });
    const opened: TestSocket[] = [];
    try {
      const a = await heartbeating(city, "u_a");
      const b = await heartbeating(city, "u_b");
      opened.push(a, b);
      await a.next((f) => f.event === "presence.update" && f.user_id === "u_b");
      const c = await heartbeating(city, "u_c"); // a third listener: over the limit
      opened.push(c);
      opened.push(await TestSocket.open(city.wsUrl(`/ws/city/rooms/room_city_general?token=${await city.token("u_c")}`)));
      await a.next((f) => f.type === "room.presence" && f.room_slug === "general" && f.online_count === 1);
      expect(a.frames.filter((f) => f.event === "presence.update" && f.user_id === "u_c")).toEqual([]);
      const open = city.hub.socketCount();
      c.close(); // two listeners again: within the limit
      await c.waitClosed();
      await waitFor(() => city.hub.socketCount(), (n) => n === open - 1); // the server's close handler ran (it untracks last)
      const e = await TestSocket.open(city.wsUrl(`/ws/city/presence?events=counts&token=${await city.token("u_e")}`));
      opened.push(e);
      await e.next((f) => f.type === "snapshot");
      e.send({ event: "presence.heartbeat", user_id: "u_e" }); // a counts-only socket is not in the audience
      expect(await a.next((f) => f.event === "presence.update" && f.user_id === "u_e")).toEqual({ event: "presence.update", user_id: "u_e", status: "online" });
    } finally {
      for (const s of opened) s.close();
      await city.dispose();
    }
  });
});

describe("presence snapshot: the room list", () => {
  test("a room list read before the default rooms were made is not kept: the first snapshot lists them", async () => {
    const { SqliteStore } = await import("../../src/storage/sqlite.ts");
    const store = new SqliteStore({ file: ":memory:" });
    // The first read of the room list (the presence service's warm-up at start) sees the store
    // before the default rooms exist, and is answered only after the start is over.
    const real = store.listRoomMatrixMappings.bind(store);
    const held = Promise.withResolvers<void>();
    let reads = 0;
    store.listRoomMatrixMappings = async () => {
      if (reads++ > 0) return real();
      const rows = await real();
      await held.promise;
      return rows;
    };
    const city = await startTestCity({}, { store });
    const opened: TestSocket[] = [];
    try {
      held.resolve();
      await new Promise<void>((r) => setImmediate(r)); // the warm-up's answer is taken (microtasks)
      const s = await TestSocket.open(city.wsUrl(`/ws/city/presence?token=${await city.token("u_list")}`));
      opened.push(s);
      const snapshot = await s.next((f) => f.type === "snapshot");
      expect(snapshot.rooms.map((r: { room_slug: string }) => r.room_slug).sort()).toEqual(["builders", "energy", "general", "science", "welcome"]);
      expect(reads).toBe(2);
    } finally {
      for (const s of opened) s.close();
      await city.dispose();
    }
  });
});
