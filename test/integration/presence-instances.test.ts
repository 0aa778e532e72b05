/**
 * Two app instances on one Redis (and one broker): each presence transition is seen exactly once
 * by every observer, and both instances report the same room counts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { MemoryBroker, MemoryNetwork } from "../../src/engine/broker/memory.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { heartbeating, membersOnline, startTestCity, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";

const redis = engineUrl("REDIS_URL", "presence across instances");
const nats = process.env.NATS_URL;

describe.skipIf(!redis)(`presence across two instances on one Redis (broker: ${nats ? "nats" : "memory network"})`, () => {
  const prefix = `t_${randomSuffix()}:`;
  const env = {
    REDIS_URL: redis!, REDIS_KEY_PREFIX: prefix, PRESENCE_TTL_SECONDS: "2", PRESENCE_SWEEP_MS: "100", PRESENCE_FLUSH_MS: "5",
    ...(nats ? { NATS_URL: nats, NATS_SUBJECT_PREFIX: `t_${randomSuffix()}` } : {}),
  };
  let a: TestCity;
  let b: TestCity;
  const sockets: TestSocket[] = [];
  const track = (s: TestSocket) => (sockets.push(s), s);

  beforeAll(async () => {
    const network = new MemoryNetwork();
    a = await startTestCity(env, nats ? {} : { broker: new MemoryBroker(network) });
    b = await startTestCity({}, { config: a.config, ...(nats ? {} : { broker: new MemoryBroker(network) }) });
  });
  afterAll(async () => {
    for (const s of sockets) s.close();
    await a.dispose();
    await b.dispose();
    await deleteRedisKeys(redis!, prefix);
  });

  test("a user heartbeating on both instances goes online once and offline once, as every observer sees it", async () => {
    const onA = track(await heartbeating(a, "u_obs_a"));
    const onB = track(await heartbeating(b, "u_obs_b"));
    await a.broker.flush();
    await b.broker.flush();
    const viaA = track(await heartbeating(a, "u_twice"));
    const viaB = track(await heartbeating(b, "u_twice"));
    for (const obs of [onA, onB]) await obs.next((f) => f.event === "presence.update" && f.user_id === "u_twice" && f.status === "online");
    for (let i = 0; i < 3; i++) {
      await Bun.sleep(700);
      viaA.send({ event: "presence.heartbeat", user_id: "u_twice" });
      viaB.send({ event: "presence.heartbeat", user_id: "u_twice" });
    }
    for (const obs of [onA, onB]) await obs.next((f) => f.event === "presence.update" && f.user_id === "u_twice" && f.status === "offline", 5000);
    await Bun.sleep(500);
    for (const obs of [onA, onB]) {
      expect(obs.frames.filter((f) => f.event === "presence.update" && f.user_id === "u_twice").map((f) => f.status)).toEqual(["online", "offline"]);
    }
  });

  test("one user connected to each instance: both instances report the same room counts", async () => {
    const beats = [track(await heartbeating(a, "u_left")), track(await heartbeating(b, "u_right"))];
    const keepBeating = setInterval(() => {
      beats[0]!.send({ event: "presence.heartbeat", user_id: "u_left" });
      beats[1]!.send({ event: "presence.heartbeat", user_id: "u_right" });
    }, 500);
    try {
      track(await TestSocket.open(a.wsUrl(`/ws/city/rooms/room_city_general?token=${await a.token("u_left")}`)));
      track(await TestSocket.open(b.wsUrl(`/ws/city/rooms/room_city_general?token=${await b.token("u_right")}`)));
      expect(await waitFor(() => membersOnline(a, "room_city_general"), (n) => n === 2)).toBe(2);
      expect(await waitFor(() => membersOnline(b, "room_city_general"), (n) => n === 2)).toBe(2);
      const snapA = await track(await TestSocket.open(a.wsUrl(`/ws/city/presence?token=${await a.token("u_look")}`))).next((f) => f.type === "snapshot");
      const snapB = await track(await TestSocket.open(b.wsUrl(`/ws/city/presence?token=${await b.token("u_look")}`))).next((f) => f.type === "snapshot");
      const general = (snap: any) => snap.rooms.find((r: any) => r.room_slug === "general");
      expect(general(snapA)).toEqual({ room_slug: "general", online_count: 2, typing_count: 0 });
      expect(general(snapB)).toEqual(general(snapA));
      expect(await a.presence.roomMembers("room_city_general")).toEqual(["u_left", "u_right"]);
    } finally {
      clearInterval(keepBeating);
    }
  });
});
