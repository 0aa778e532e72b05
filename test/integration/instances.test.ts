/**
 * Several instances act as one city: a message sent to instance A reaches room sockets on B.
 * In-process on a MemoryNetwork with a shared SQLite file, and on real NATS + PostgreSQL.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { MemoryBroker, MemoryNetwork } from "../../src/engine/broker/memory.ts";
import { createTestSchema, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { startTestCity, testConfig, TestSocket, type TestCity } from "../helpers/city.ts";

const pg = engineUrl("DATABASE_URL", "instances on postgres + nats");
const nats = engineUrl("NATS_URL", "instances on postgres + nats");

interface Pair {
  a: TestCity;
  b: TestCity;
  dispose(): Promise<void>;
}

const variants: { name: string; make: () => Promise<Pair> }[] = [
  {
    name: "memory network + one sqlite file",
    make: async () => {
      const net = new MemoryNetwork();
      const { config, cleanup } = testConfig({ CITY_WRITE_RATE_PER_SECOND: "0" });
      const a = await startTestCity({}, { config, broker: new MemoryBroker(net) });
      const b = await startTestCity({}, { config, broker: new MemoryBroker(net) });
      return { a, b, dispose: async () => (await a.dispose(), await b.dispose(), cleanup()) };
    },
  },
];
if (pg && nats) {
  variants.push({
    name: "nats + postgres",
    make: async () => {
      const db = await createTestSchema(pg);
      const env = { DATABASE_URL: db.url, NATS_URL: nats, NATS_SUBJECT_PREFIX: `t_${randomSuffix()}`, CITY_WRITE_RATE_PER_SECOND: "0" };
      const a = await startTestCity(env);
      const b = await startTestCity(env);
      return { a, b, dispose: async () => (await a.dispose(), await b.dispose(), await db.drop()) };
    },
  });
}

for (const v of variants) {
  describe(`two instances (${v.name})`, () => {
    let p: Pair;
    const sockets: TestSocket[] = [];
    beforeAll(async () => {
      p = await v.make();
    });
    afterAll(async () => {
      for (const s of sockets) s.close();
      await p.dispose();
    });
    const open = async (c: TestCity, path: string) => {
      const s = await TestSocket.open(c.wsUrl(path));
      sockets.push(s);
      return s;
    };

    test("a message sent to A over HTTP and over a socket reaches sockets on B, in order", async () => {
      const alice = await p.a.token("u_alice");
      // A live socket's "now" is when B's room stream has its position and its NATS subscription,
      // which a new stream takes in the background: B's socket starts from the room's last seq instead.
      const last = (((await (await p.b.http("/city/rooms/room_city_general/messages?limit=1")).json()) as { seq: number }[])[0]?.seq ?? 0);
      const onB = await open(p.b, `/ws/city/rooms/room_city_general?since=${last}`);
      const onA = await open(p.a, `/ws/city/rooms/room_city_general?token=${alice}`);
      const from = onB.frames.length;
      const res = await p.a.http("/city/rooms/room_city_general/messages", { method: "POST", token: alice, json: { body: "from A over http" } });
      expect(res.status).toBe(201);
      for (let i = 0; i < 20; i++) onA.send({ event: "room.message.send", body: `ws ${i}` });
      await onB.until(() => onB.frames.slice(from).filter((f) => f.event === "room.message").length === 21, 5000);
      const bodies = onB.frames.slice(from).filter((f) => f.event === "room.message").map((f) => f.message.body);
      expect(bodies).toEqual(["from A over http", ...Array.from({ length: 20 }, (_, i) => `ws ${i}`)]);
      // B's own store view agrees
      const stored = (await (await p.b.http("/city/rooms/room_city_general/messages?limit=21")).json()) as any[];
      expect(stored.map((m) => m.body)).toEqual(bodies);
    });

    test("room.join from a socket on B is seen on A; a room created on A takes messages on B", async () => {
      const bob = await p.b.token("u_bob");
      const watcher = await open(p.a, "/ws/city/rooms/room_city_energy");
      // A takes its subscription to the room in the background, and a join has no seq to recover by:
      // sentinels from B until one is seen on A say the subscription is in place.
      for (let i = 0; ; i++) {
        expect((await p.b.http("/city/rooms/room_city_energy/messages", { method: "POST", token: bob, json: { body: `sentinel ${i}` } })).status).toBe(201);
        const seen = await watcher.next((f) => f.event === "room.message" && f.message.body === `sentinel ${i}`, 300).catch(() => null);
        if (seen) break;
        expect(i).toBeLessThan(30);
      }
      await open(p.b, `/ws/city/rooms/room_city_energy?token=${bob}`);
      expect(await watcher.next((f) => f.event === "room.join", 5000)).toEqual({ event: "room.join", room_id: "room_city_energy", user_id: "u_bob" });
      const created = await p.a.http("/city/rooms", { method: "POST", token: bob, json: { name: "Shared", slug: `shared-${randomSuffix()}` } });
      const room = ((await created.json()) as any).id;
      const res = await p.b.http(`/city/rooms/${room}/messages`, { method: "POST", token: bob, json: { body: "posted on B" } });
      expect(res.status).toBe(201);
    });

    test("default rooms are created once for both instances", async () => {
      const feed = (await (await p.a.http("/city/feed?limit=100")).json()) as any[];
      const system = feed.filter((e) => e.kind === "system" && e.payload.body.startsWith("Кімнату General"));
      expect(system.length).toBe(1);
      const detail = (await (await p.b.http("/city/rooms/room_city_welcome")).json()) as any;
      expect(detail.messages.filter((m: any) => m.author_user_id === null).length).toBe(1);
    });
  });
}
