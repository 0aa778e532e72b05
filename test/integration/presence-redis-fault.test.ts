/**
 * Redis going away and coming back while sockets heartbeat. The test runs a redis-server of its
 * own on a spare loopback port (never the shared one) and stops it by its pid.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createClient } from "redis";
import { heartbeating, membersOnline, serverRead, startTestCity, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";
import { engineUrl } from "../helpers/engines.ts";
import { ownRedis, type OwnEngine } from "../helpers/own-engines.ts";

const wanted = engineUrl("REDIS_URL", "presence with Redis down and back");
const redisServer = Bun.which("redis-server");

describe.skipIf(!wanted || !redisServer)("presence when Redis is down and comes back", () => {
  let redis: OwnEngine | null = null;
  let city: TestCity | null = null;
  const sockets: TestSocket[] = [];
  afterAll(async () => {
    for (const s of sockets) s.close();
    await city?.dispose();
    await redis?.dispose();
  });

  test("rooms and messages keep working, /readyz says degraded, heartbeats resume within 5 s, memory stays bounded", async () => {
    redis = await ownRedis();
    const url = redis.url;
    city = await startTestCity({ REDIS_URL: url, PRESENCE_SWEEP_MS: "200", PRESENCE_FLUSH_MS: "5", CITY_WRITE_RATE_PER_SECOND: "0" });
    const c = city;
    const beat = await heartbeating(c, "u_fault");
    sockets.push(beat);
    const beating = setInterval(() => beat.send({ event: "presence.heartbeat", user_id: "u_fault" }), 100);
    sockets.push(await TestSocket.open(c.wsUrl(`/ws/city/rooms/room_city_energy?token=${await c.token("u_fault")}`)));
    const probe = createClient({ url, socket: { reconnectStrategy: false } });
    probe.on("error", () => {});
    try {
      await probe.connect();
      await waitFor(() => probe.get("presence:user:u_fault"), (v) => v === "online");
      await probe.close();
      expect(((await (await c.http("/readyz")).json()) as any).status).toBe("ready");
      expect(await waitFor(() => membersOnline(c, "room_city_energy"), (n) => n === 1)).toBe(1);

      // Redis goes away
      await redis.stop();
      const ready = await waitFor(async () => (await (await c.http("/readyz")).json()) as any, (r) => r.status === "degraded");
      expect(ready.engines.presence).toEqual({ engine: "redis", state: "down" });
      const token = await c.token("u_writer");
      const room = await TestSocket.open(c.wsUrl(`/ws/city/rooms/room_city_general?token=${token}`));
      sockets.push(room);
      const posted = await c.http("/city/rooms/room_city_general/messages", { method: "POST", token, json: { body: "while redis is down" } });
      expect(posted.status).toBe(201);
      expect((await room.next((f) => f.event === "room.message")).message.body).toBe("while redis is down");
      expect((await c.http("/city/rooms")).status).toBe(200);
      // heartbeats keep arriving (10/s, and 50 more at once here, all read by the server) while
      // flushes keep failing: the queue holds distinct users, not every heartbeat
      const failed = c.presence.stats.flushFailures;
      for (let i = 0; i < 50; i++) beat.send({ event: "presence.heartbeat", user_id: "u_fault" });
      await serverRead(beat);
      await waitFor(() => c.presence.stats.flushFailures, (n) => n >= failed + 3);
      expect(c.presence.pendingCount()).toBeLessThanOrEqual(3);

      // Redis comes back, empty, on the same port
      await redis.start();
      const t0 = Date.now();
      const back = createClient({ url, socket: { reconnectStrategy: false } });
      back.on("error", () => {});
      await back.connect();
      try {
        await waitFor(() => back.get("presence:user:u_fault"), (v) => v === "online", 5000);
        expect(Date.now() - t0).toBeLessThan(5000);
        const ttl = await back.ttl("presence:user:u_fault");
        expect(ttl).toBeGreaterThan(30);
      } finally {
        await back.close();
      }
      expect(((await waitFor(async () => (await (await c.http("/readyz")).json()) as any, (r) => r.status === "ready")) as any).engines.presence.state).toBe("up");
      // the room hold was lost with Redis's data and is written again on recovery
      expect(await waitFor(() => membersOnline(c, "room_city_energy"), (n) => n === 1, 5000)).toBe(1);
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      clearInterval(beating);
    }
  }, 30_000);
});
