/**
 * The Store contract (src/storage/store.ts), written once and run on every implementation:
 * store.sqlite.test.ts and store.postgres.test.ts call {@link storeContract}.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { IdGenerator } from "../../src/ids.ts";
import type { FeedEvent, Message, Room, SecondmeMessage, Store } from "../../src/storage/store.ts";

export interface StoreHarness {
  /** A fresh, empty, unmigrated store. */
  open(): Promise<Store>;
  /** Removes whatever `open` created. */
  cleanup(): Promise<void>;
}

const ids = new IdGenerator();
let clock = Date.UTC(2026, 0, 1, 12);
const tick = () => (clock += 7);

function room(slug: string, extra: Partial<Room> = {}): Room {
  return {
    id: `room_city_${slug}`, slug, name: slug.toUpperCase(), description: null, is_default: false,
    created_at: new Date(tick()).toISOString(), created_by: "u_alice", matrix_room_id: null, matrix_room_alias: null, ...extra,
  };
}

function message(roomId: string, body: string, author = "u_alice"): Message {
  const now = tick();
  return { id: ids.make("message", now), room_id: roomId, author_user_id: author, author_agent_id: null, body, created_at: new Date(now).toISOString() };
}

function eventFor(m: Message): FeedEvent {
  return {
    id: ids.make("feedEvent", Date.parse(m.created_at)), kind: "room_message", room_id: m.room_id, user_id: m.author_user_id, agent_id: null,
    payload: { body: m.body, snippet: m.body.slice(0, 10), message_id: m.id }, created_at: m.created_at,
  };
}

/**
 * The rejection of `p`. (Bun's `expect(p).rejects` does not see a rejection that arrives as a
 * Worker message, as the SQLite writer thread's do; awaiting in try/catch does.)
 */
async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected the promise to reject");
}

export function storeContract(name: string, harness: StoreHarness | null): void {
  describe.skipIf(harness === null)(`Store contract: ${name}`, () => {
    let store: Store;
    beforeAll(async () => {
      store = await harness!.open();
    });
    afterAll(async () => {
      await store?.close();
      await harness!.cleanup();
    });

    test("migrate applies every version once and is a no-op the second time", async () => {
      expect(await store.migrate()).toEqual(["0001_city", "0002_secondme_status"]);
      expect(await store.migrate()).toEqual([]);
      await store.ping();
    });

    test("migrate from two connections at once applies each version exactly once", async () => {
      const other = await harness!.open();
      try {
        const [a, b] = await Promise.all([store.migrate(), other.migrate()]);
        expect([...a, ...b]).toEqual([]);
      } finally {
        await other.close();
      }
    });

    test("createRoom writes the room with its seed, and refuses a taken id or slug without writing", async () => {
      const r = room("general", { is_default: true, description: "Головна кімната міста" });
      const welcome = { ...message(r.id, "Ласкаво просимо"), author_user_id: null };
      const system: FeedEvent = { ...eventFor(welcome), kind: "system", user_id: null };
      expect(await store.createRoom(r, { messages: [welcome], events: [system] })).toBe(true);
      expect(await store.getRoom(r.id)).toEqual(r);

      const again = { ...message(r.id, "second welcome"), author_user_id: null };
      expect(await store.createRoom(r, { messages: [again], events: [] })).toBe(false);
      const sameSlugOtherName = { ...r, name: "Other" };
      expect(await store.createRoom(sameSlugOtherName, { messages: [], events: [] })).toBe(false);
      expect(await store.getRoom(r.id)).toEqual(r);
      const msgs = await store.listMessages(r.id, { limit: 10 });
      expect(msgs.map((m) => m.body)).toEqual(["Ласкаво просимо"]);
      const feed = await store.listFeed({ limit: 10 });
      expect(feed.filter((e) => e.room_id === r.id).map((e) => e.kind)).toEqual(["system"]);
      expect(feed[0]!.payload).toEqual(system.payload);
    });

    test("getRoom of an unknown id is null", async () => {
      expect(await store.getRoom("room_city_nope")).toBeNull();
    });

    test("appendMessages is atomic: a batch with a bad row writes nothing", async () => {
      const r = room("atomic");
      await store.createRoom(r, { messages: [], events: [] });
      const good = message(r.id, "good");
      const bad = message("room_city_missing", "bad room");
      const err = await rejection(store.appendMessages([{ message: good, event: eventFor(good) }, { message: bad, event: eventFor(bad) }]));
      expect(err.message).toMatch(/foreign key/i);
      expect(await store.listMessages(r.id, { limit: 10 })).toEqual([]);
      expect((await store.listFeed({ limit: 100 })).some((e) => e.id === eventFor(good).id)).toBe(false);
    });

    test("messages page oldest-first by id: latest N, before, after", async () => {
      const r = room("paging");
      await store.createRoom(r, { messages: [], events: [] });
      const written = Array.from({ length: 12 }, (_, i) => message(r.id, `m${i}`, i % 2 ? "u_bob" : "u_alice"));
      await store.appendMessages(written.slice(0, 5).map((m) => ({ message: m, event: eventFor(m) })));
      await store.appendMessages(written.slice(5).map((m) => ({ message: m, event: eventFor(m) })));
      const bodies = (ms: Message[]) => ms.map((m) => m.body);

      expect(await store.listMessages(r.id, { limit: 3 })).toEqual(written.slice(9));
      expect(bodies(await store.listMessages(r.id, { limit: 4, before: written[6]!.id }))).toEqual(["m2", "m3", "m4", "m5"]);
      expect(bodies(await store.listMessages(r.id, { limit: 100, after: written[8]!.id }))).toEqual(["m9", "m10", "m11"]);
      // after + limit keeps the newest: recovery replays the latest N when more were missed
      expect(bodies(await store.listMessages(r.id, { limit: 2, after: written[3]!.id }))).toEqual(["m10", "m11"]);
      expect(await store.listMessages(r.id, { limit: 10, after: written[11]!.id })).toEqual([]);
      expect(await store.listMessages("room_city_other", { limit: 10 })).toEqual([]);
    });

    test("listRooms orders by creation, pages, and carries last_event", async () => {
      const rooms = await store.listRooms({ limit: 100, offset: 0 });
      const slugs = rooms.map((r) => r.slug);
      expect(slugs).toEqual(["general", "atomic", "paging"]);
      const paging = rooms.find((r) => r.slug === "paging")!;
      const latest = await store.listMessages(paging.id, { limit: 1 });
      expect(paging.last_event).toBe(latest[0]!.created_at);
      expect(rooms.find((r) => r.slug === "atomic")!.last_event).toBeNull();
      expect((await store.listRooms({ limit: 1, offset: 1 })).map((r) => r.slug)).toEqual(["atomic"]);
    });

    test("listFeed is newest-first and pages with before", async () => {
      const all = await store.listFeed({ limit: 100 });
      expect(all.length).toBe(13); // 1 system + 12 room_message
      const sorted = [...all].sort((a, b) => (a.id < b.id ? 1 : -1));
      expect(all.map((e) => e.id)).toEqual(sorted.map((e) => e.id));
      const page2 = await store.listFeed({ limit: 5, before: all[4]!.id });
      expect(page2.map((e) => e.id)).toEqual(all.slice(5, 10).map((e) => e.id));
      expect(all[0]!.kind).toBe("room_message");
      expect(typeof all[0]!.payload.body).toBe("string");
    });

    test("unicode and quotes survive the round trip", async () => {
      const r = room("unicode");
      await store.createRoom(r, { messages: [], events: [] });
      const body = `Привіт "місто" \\ ' 🚀 {"json": [1]} ,{}`;
      const m = message(r.id, body);
      await store.appendMessages([{ message: m, event: eventFor(m) }]);
      expect((await store.listMessages(r.id, { limit: 1 }))[0]!.body).toBe(body);
      const ev = (await store.listFeed({ limit: 1 }))[0]!;
      expect(ev.payload.body).toBe(body);
    });

    test("Second Me: one active session per user, messages in order, status, stats, clear", async () => {
      const at = () => new Date(tick()).toISOString();
      const s1 = await store.secondmeSession("u_sm", { id: ids.make("secondmeSession", tick()), created_at: at() });
      expect(await store.secondmeSession("u_sm", { id: ids.make("secondmeSession", tick()), created_at: at() })).toBe(s1);
      const other = await store.secondmeSession("u_other", { id: ids.make("secondmeSession", tick()), created_at: at() });
      expect(other).not.toBe(s1);
      const msg = (role: "user" | "assistant", content: string, extra: Partial<SecondmeMessage> = {}): SecondmeMessage => {
        const now = tick();
        return {
          id: ids.make("secondmeMessage", now), session_id: s1, user_id: "u_sm", role, content, tokens_used: null, latency_ms: null,
          status: role === "user" ? "pending" : "answered", error: null, created_at: new Date(now).toISOString(), ...extra,
        };
      };
      const q1 = msg("user", "привіт?");
      const a1 = msg("assistant", "Вітаю!", { tokens_used: 42, latency_ms: 120 });
      const q2 = msg("user", "ще раз");
      for (const m of [q1, a1, q2]) await store.appendSecondmeMessage(m);
      await store.setSecondmeStatus(q1.id, "answered", null);
      await store.setSecondmeStatus(q2.id, "unanswered", "agents_core_timeout");
      const history = await store.listSecondmeMessages("u_sm", 10);
      expect(history.map((m) => [m.role, m.content, m.status, m.error])).toEqual([
        ["user", "привіт?", "answered", null],
        ["assistant", "Вітаю!", "answered", null],
        ["user", "ще раз", "unanswered", "agents_core_timeout"],
      ]);
      expect(history[1]).toEqual(a1);
      expect((await store.listSecondmeMessages("u_sm", 2)).map((m) => m.content)).toEqual(["Вітаю!", "ще раз"]);
      expect(await store.secondmeStats("u_sm")).toEqual({ sessions: 1, messages: 3, total_tokens: 42, avg_latency_ms: 120, last_interaction: q2.created_at });
      expect(await store.secondmeStats("u_nobody")).toEqual({ sessions: 0, messages: 0, total_tokens: 0, avg_latency_ms: null, last_interaction: null });
      expect(await store.clearSecondme("u_sm")).toBe(3);
      expect(await store.listSecondmeMessages("u_sm", 10)).toEqual([]);
      expect((await store.secondmeStats("u_sm")).sessions).toBe(0);
      expect(await store.secondmeSession("u_other", { id: "smsess_unused", created_at: at() })).toBe(other);
    });

    test("listRoomMatrixMappings returns every room's mapping by slug", async () => {
      await store.createRoom(room("energy", { matrix_room_id: "!abc:daarion.space", matrix_room_alias: "#city_energy:daarion.space" }), { messages: [], events: [] });
      const map = await store.listRoomMatrixMappings();
      expect(map.map((m) => m.slug)).toEqual(["atomic", "energy", "general", "paging", "unicode"]);
      expect(map.find((m) => m.slug === "energy")).toEqual({
        id: "room_city_energy", slug: "energy", matrix_room_id: "!abc:daarion.space", matrix_room_alias: "#city_energy:daarion.space",
      });
    });
  });
}
