/**
 * The presence socket against a real server, on in-process presence and (when REDIS_URL is set)
 * on Redis: snapshot, transitions, heartbeat rules, throttled room counts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { heartbeating, refusedUpgrade, startTestCity, TestSocket, type TestCity } from "../helpers/city.ts";

const redis = engineUrl("REDIS_URL", "presence socket on redis");
const variants: { name: string; env: Record<string, string> }[] = [{ name: "in-process", env: {} }];
if (redis) variants.push({ name: "redis", env: { REDIS_URL: redis, REDIS_KEY_PREFIX: `t_${randomSuffix()}:` } });

for (const v of variants) {
  describe(`presence socket (${v.name})`, () => {
    let city: TestCity;
    const sockets: TestSocket[] = [];
    const track = (s: TestSocket) => (sockets.push(s), s);
    beforeAll(async () => {
      city = await startTestCity({ ...v.env, PRESENCE_TTL_SECONDS: "2", PRESENCE_SWEEP_MS: "100", PRESENCE_FLUSH_MS: "5", ROOM_PRESENCE_THROTTLE_MS: "600", TYPING_TTL_SECONDS: "5" });
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
      const observer = track(await heartbeating(city, "u_observer"));
      const alice = track(await heartbeating(city, "u_alice1"));
      expect(await observer.next((f) => f.event === "presence.update" && f.user_id === "u_alice1")).toEqual({ event: "presence.update", user_id: "u_alice1", status: "online" });
      // keep beating for longer than the TTL: still one online, no offline
      for (let i = 0; i < 3; i++) {
        await Bun.sleep(800);
        alice.send({ event: "presence.heartbeat", user_id: "u_alice1" });
      }
      const mine = () => observer.frames.filter((f) => f.event === "presence.update" && f.user_id === "u_alice1");
      expect(mine()).toEqual([{ event: "presence.update", user_id: "u_alice1", status: "online" }]);
      // stop: offline within TTL + sweep, exactly once
      await observer.next((f) => f.event === "presence.update" && f.user_id === "u_alice1" && f.status === "offline", 4000);
      await Bun.sleep(500);
      expect(mine().map((f) => f.status)).toEqual(["online", "offline"]);
      expect(await city.presence.isOnline("u_alice1")).toBe(false);
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
      const full = track(await heartbeating(city, "u_full_observer"));
      track(await heartbeating(city, "u_newcomer"));
      await full.next((f) => f.event === "presence.update" && f.user_id === "u_newcomer");
      track(await TestSocket.open(city.wsUrl(`/ws/city/rooms/room_city_builders?token=${await city.token("u_newcomer")}`)));
      await countsOnly.next((f) => f.type === "room.presence" && f.room_slug === "builders" && f.online_count === 1);
      expect(countsOnly.frames.filter((f) => f.event === "presence.update")).toEqual([]);
      expect(await refusedUpgrade(`${city.url}/ws/city/presence?events=everything&token=${await city.token("u_x")}`)).toMatchObject({ status: 400 });
    });

    test("the presence socket needs a valid token", async () => {
      expect(await refusedUpgrade(`${city.url}/ws/city/presence`)).toMatchObject({ status: 401, body: { error: { code: "unauthorized" } } });
      expect(await refusedUpgrade(`${city.url}/ws/city/presence?token=bad`)).toMatchObject({ status: 401 });
    });

    test("room counts: online changes go out at once, typing-only changes at most once per throttle window", async () => {
      const observer = track(await heartbeating(city, "u_counts_observer"));
      const token = await city.token("u_counter");
      track(await heartbeating(city, "u_counter"));
      const inRoom = track(await TestSocket.open(city.wsUrl(`/ws/city/rooms/room_city_energy?token=${token}`)));
      const first = await observer.next((f) => f.type === "room.presence" && f.room_slug === "energy" && f.online_count === 1);
      expect(first).toEqual({ type: "room.presence", room_slug: "energy", online_count: 1, typing_count: 0 });
      const at = observer.frames.length;
      const t0 = Date.now();
      inRoom.send({ event: "room.typing", room_id: "room_city_energy" });
      const typing = await observer.next((f) => f.type === "room.presence" && f.room_slug === "energy" && f.typing_count === 1, 3000, at);
      // typing alone changed and the last frame was under 600 ms ago: it waited for the window
      expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
      expect(typing).toEqual({ type: "room.presence", room_slug: "energy", online_count: 1, typing_count: 1 });
      const energyFrames = observer.frames.slice(at).filter((f) => f.type === "room.presence" && f.room_slug === "energy");
      expect(energyFrames.length).toBe(1);
      inRoom.close();
      const gone = await observer.next((f) => f.type === "room.presence" && f.room_slug === "energy" && f.online_count === 0, 3000, at);
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
      c.close(); // two listeners again: within the limit
      await c.waitClosed();
      await Bun.sleep(50);
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
