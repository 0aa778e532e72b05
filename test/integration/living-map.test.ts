/**
 * The Living Map on one instance without NATS (the in-process bus carries the city's own events),
 * on the embedded store and on PostgreSQL: routes and their auth, the snapshot's shape and
 * sources, events from the city moving the scene and reaching history and the stream, stream
 * replay with `since`, limits, and every bad input answered in the error shape.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { storeVariants } from "../helpers/engines.ts";
import { startTestCity, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";

for (const variant of storeVariants("living map")) {
  describe(`living map (${variant.name}, no NATS)`, () => {
    let city: TestCity;
    let drop: () => Promise<void>;
    let token: string;
    const sockets: TestSocket[] = [];
    const open = async (p: string) => {
      const s = await TestSocket.open(city.wsUrl(p));
      sockets.push(s);
      return s;
    };
    const get = async (p: string, auth = true) => {
      const res = await city.http(p, auth ? { token } : {});
      return { status: res.status, body: (await res.json()) as any };
    };
    const post = (room: string, body: string) => city.http(`/city/rooms/${room}/messages`, { method: "POST", token, json: { body } });

    beforeAll(async () => {
      const made = await variant.env();
      drop = made.drop;
      city = await startTestCity({ ...made.env, CITY_WRITE_RATE_PER_SECOND: "0", LIVING_MAP_SOCKETS_PER_USER: "2", LIVING_MAP_RECOVERY_MAX_EVENTS: "5" });
      token = await city.token("u_mapper");
    });
    afterAll(async () => {
      for (const s of sockets) s.close();
      await city.dispose();
      await drop();
    });

    test("health is open; everything else needs a token unless LIVING_MAP_PUBLIC", async () => {
      expect(await get("/living-map/health", false)).toMatchObject({ status: 200, body: { status: "ok", service: "living-map-service", version: expect.any(String) } });
      for (const p of ["/living-map/snapshot", "/living-map/entities", "/living-map/entities/city:daarion", "/living-map/history"]) {
        expect({ p, ...(await get(p, false)) }).toMatchObject({ p, status: 401, body: { error: { code: "unauthorized" } } });
      }
      await expect(TestSocket.open(city.wsUrl("/living-map/stream"))).rejects.toThrow();
    });

    test("the snapshot has the four layers and tells the truth about all six sources", async () => {
      // The city layer is the store's rooms, no more and no fewer (other tests in this file may
      // have added one: compared with what the store lists, not with a count).
      const stored = async () => (await city.store.listRooms({ limit: 200, offset: 0 })).map((r) => `room:${r.id}`).sort();
      const mapped = async () => ((await get("/living-map/snapshot")).body.layers.city.rooms as any[]).map((r) => r.id).sort();
      await waitFor(async () => JSON.stringify(await mapped()) === JSON.stringify(await stored()));
      const { status, body } = await get("/living-map/snapshot");
      expect(status).toBe(200);
      expect(Object.keys(body.layers).sort()).toEqual(["agents", "city", "nodes", "space"]);
      expect(body.meta.source_services).toEqual(["city-service", "space-service", "agents-service", "microdao-service", "dao-service", "usage-engine"]);
      const sources = Object.fromEntries(body.meta.sources.map((s: any) => [s.name, s.status]));
      expect(sources).toEqual({
        "city-service": "ok", "space-service": "not_configured", "agents-service": "not_configured", "microdao-service": "not_configured", "dao-service": "not_configured",
        "usage-engine": "not_configured",
      });
      // nothing invented for what is not configured
      expect([body.layers.space.planets, body.layers.space.nodes, body.layers.nodes.items, body.layers.agents.items, body.layers.city.items]).toEqual([[], [], [], [], []]);
      const ids = body.layers.city.rooms.map((r: any) => r.id).sort();
      expect(ids).toEqual(await stored());
      expect(ids).toEqual(expect.arrayContaining(["general", "welcome", "builders", "science", "energy"].map((s) => `room:room_city_${s}`)));
    });

    test("a city refresh asked for while one is reading is not lost: it runs again after it", async () => {
      const store = city.store;
      const listRooms = store.listRooms;
      // The first read answers with what it read before the room below was created, and only
      // when released: as at start-up, where it can begin before the default rooms exist.
      const held = Promise.withResolvers<void>();
      let reads = 0;
      store.listRooms = async (page) => {
        const rows = await listRooms.call(store, page);
        if (++reads === 1) await held.promise;
        return rows;
      };
      try {
        const first = city.livingMap.refreshCity();
        await waitFor(() => reads, (n) => n === 1);
        const made = await city.http("/city/rooms", { method: "POST", token, json: { name: "Late", slug: "late" } });
        expect(made.status).toBe(201);
        void city.livingMap.refreshCity(); // asked for while the first one reads
        held.resolve();
        await first;
        const rooms = await waitFor(async () => (await get("/living-map/snapshot")).body.layers.city.rooms.map((r: any) => r.id), (ids: string[]) => ids.includes("room:room_city_late"), 3000);
        expect(rooms).toContain("room:room_city_late");
        expect(reads).toBeGreaterThanOrEqual(2);
      } finally {
        store.listRooms = listRooms;
      }
    });

    test("a room message moves the map: history (source local), the room's activity, and the stream", async () => {
      const stream = await open(`/living-map/stream?token=${token}`);
      const snap = await stream.next((f) => f.kind === "snapshot");
      expect(Object.keys(snap).sort()).toEqual(["generated_at", "kind", "layers", "meta"]);
      // The city's own rooms reach the scene in the background at start: wait for science to be there.
      const science: any = await waitFor(async () => (await get("/living-map/snapshot")).body.layers.city.rooms.find((r: any) => r.id === "room:room_city_science"), Boolean);
      const before = science.messages_last_hour;
      expect((await post("room_city_science", "на карту")).status).toBe(201);
      const ev = await stream.next((f) => f.kind === "event");
      expect(Object.keys(ev).sort()).toEqual(["event_type", "id", "kind", "payload", "timestamp"]);
      expect(ev).toMatchObject({ event_type: "city.event.room_message", payload: { event: "room.message", room_id: "room_city_science", message: { body: "на карту" } } });
      const history = await waitFor(async () => (await get("/living-map/history?limit=1")).body.items, (items: any[]) => items[0]?.id === ev.id);
      expect(history[0]).toMatchObject({ id: ev.id, event_type: "city.event.room_message", source: "local", entity_type: "channel", entity_id: "room:room_city_science" });
      const room = (await get("/living-map/snapshot")).body.layers.city.rooms.find((r: any) => r.id === "room:room_city_science");
      expect(room.messages_last_hour).toBe(before + 1);
      expect((await get("/living-map/entities/room:room_city_science")).body).toMatchObject({ id: "room:room_city_science", type: "channel", layer: "city" });
    });

    test("a stream reconnecting with since gets what it missed, then live; too many missed gets a fresh snapshot", async () => {
      const first = await open(`/living-map/stream?token=${token}`);
      await first.next((f) => f.kind === "snapshot");
      await post("room_city_energy", "m0");
      const last = (await first.next((f) => f.kind === "event")).id;
      first.close();
      for (let i = 1; i <= 3; i++) await post("room_city_energy", `m${i}`);
      const again = await open(`/living-map/stream?token=${token}&since=${last}`);
      await again.until(() => again.frames.length >= 3);
      await post("room_city_energy", "m4");
      await again.until(() => again.frames.length >= 4);
      expect(again.frames.map((f) => [f.kind, f.payload?.message?.body])).toEqual([["event", "m1"], ["event", "m2"], ["event", "m3"], ["event", "m4"]]);
      again.close();
      // more than LIVING_MAP_RECOVERY_MAX_EVENTS (5) missed: a fresh snapshot instead
      for (let i = 0; i < 7; i++) await post("room_city_energy", `n${i}`);
      const late = await open(`/living-map/stream?token=${token}&since=${last}`);
      expect((await late.next(() => true)).kind).toBe("snapshot");
    });

    test("bad input: unknown entity 404, bad type/limit/since/before 400, unknown stream cursor refused", async () => {
      expect(await get("/living-map/entities/node:nope")).toMatchObject({ status: 404, body: { error: { code: "entity_not_found" } } });
      for (const q of ["type=planet", "limit=0", "limit=1001", "limit=abc", "limit=0x10"]) {
        expect({ q, ...(await get(`/living-map/entities?${q}`)) }).toMatchObject({ q, status: 400, body: { error: { code: "validation_failed" } } });
      }
      for (const q of ["since=yesterday", "since=2025-13-45T00:00:00Z", "limit=0", "limit=1001"]) {
        expect({ q, ...(await get(`/living-map/history?${q}`)) }).toMatchObject({ q, status: 400, body: { error: { code: "validation_failed" } } });
      }
      expect(await get(`/living-map/history?before=${crypto.randomUUID()}`)).toMatchObject({ status: 400, body: { error: { code: "invalid_cursor" } } });
      // (a user of its own: the per-user stream limit is another test's subject)
      const own = await city.token("u_bad_input");
      const res = await fetch(`${city.url}/living-map/stream?token=${own}&since=${crypto.randomUUID()}`, {
        headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13" },
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as any).error.code).toBe("invalid_cursor");
      // the stream only takes auth.refresh
      const s = await open(`/living-map/stream?token=${own}`);
      s.send({ event: "room.message.send", body: "no" });
      expect((await s.next((f) => f.event === "error")).code).toBe("unknown_event");
    });

    test("history pages back with before and filters with since", async () => {
      for (let i = 0; i < 4; i++) await post("room_city_welcome", `h${i}`);
      const page = await waitFor(async () => (await get("/living-map/history?limit=2")).body.items, (items: any[]) => items[0]?.payload?.message?.body === "h3");
      expect(page.map((e: any) => e.payload.message.body)).toEqual(["h3", "h2"]);
      const older = (await get(`/living-map/history?limit=2&before=${page[1].id}`)).body.items;
      expect(older.map((e: any) => e.payload.message.body)).toEqual(["h1", "h0"]);
      const since = (await get(`/living-map/history?since=${encodeURIComponent(page[0].timestamp)}`)).body.items;
      expect(since.map((e: any) => e.id)).toContain(page[0].id);
      expect(since.every((e: any) => e.timestamp >= page[0].timestamp)).toBe(true);
    });

    test("streams per user are limited: the next one is 429", async () => {
      const t = await city.token("u_streams");
      await open(`/living-map/stream?token=${t}`);
      await open(`/living-map/stream?token=${t}`);
      const res = await fetch(`${city.url}/living-map/stream?token=${t}`, {
        headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13" },
      });
      expect(res.status).toBe(429);
      expect(((await res.json()) as any).error.code).toBe("rate_limited");
    });
  });
}

describe("living map with LIVING_MAP_PUBLIC", () => {
  test("reads and the stream need no token", async () => {
    const city = await startTestCity({ LIVING_MAP_PUBLIC: "true" });
    try {
      expect((await city.http("/living-map/snapshot")).status).toBe(200);
      expect((await city.http("/living-map/entities")).status).toBe(200);
      const s = await TestSocket.open(city.wsUrl("/living-map/stream"));
      expect((await s.next(() => true)).kind).toBe("snapshot");
      s.close();
    } finally {
      await city.dispose();
    }
  });
});
