/**
 * The Store contract (src/storage/store.ts), written once and run on every implementation:
 * store.sqlite.test.ts and store.postgres.test.ts call {@link storeContract}. Every test makes its
 * own rooms (random slugs) and asserts only on them, so each passes alone and in any order.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { IdGenerator } from "../../src/ids.ts";
import type { FeedEvent, LivingMapEventWrite, Message, MessageWrite, NewMessage, Room, SecondmeMessage, Store } from "../../src/storage/store.ts";
import { POSTGRES_MIGRATIONS } from "../../src/storage/migrations.ts";

/** One throwaway store of an implementation (a schema on PostgreSQL, a file on SQLite). */
export interface TestDatabase {
  /** A new connection to this database (unmigrated until someone migrates it). */
  open(options?: { migrations?: "all" | "before-seq" }): Promise<Store>;
  /** Runs raw SQL on this database (to set up rows an older schema would have). */
  raw(sql: string): Promise<void>;
  drop(): Promise<void>;
}

export interface StoreHarness {
  /** A new, empty database. */
  database(): Promise<TestDatabase>;
}

const ALL_VERSIONS = POSTGRES_MIGRATIONS.map((m) => m.version);
const ids = new IdGenerator();
let clock = Date.UTC(2026, 0, 1, 12);
const tick = () => (clock += 7);
const unique = () => Math.random().toString(36).slice(2, 9);

/** A room row for a store test (`room_city_{slug}`). */
export function room(slug: string, extra: Partial<Room> = {}): Room {
  return {
    id: `room_city_${slug}`, slug, name: slug.toUpperCase(), description: null, is_default: false,
    created_at: new Date(tick()).toISOString(), created_by: "u_alice", matrix_room_id: null, matrix_room_alias: null, ...extra,
  };
}

/** A new message with a fresh id and a later time. */
export function message(roomId: string, body: string, author = "u_alice"): NewMessage {
  const now = tick();
  return { id: ids.make("message", now), room_id: roomId, author_user_id: author, author_agent_id: null, body, created_at: new Date(now).toISOString() };
}

function eventFor(m: NewMessage): FeedEvent {
  return {
    id: ids.make("feedEvent", Date.parse(m.created_at)), kind: "room_message", room_id: m.room_id, user_id: m.author_user_id, agent_id: null,
    payload: { body: m.body, snippet: m.body.slice(0, 10), message_id: m.id }, created_at: m.created_at,
  };
}

/** Messages with their feed events, as `appendMessages` takes them. */
export const writes = (ms: NewMessage[]): MessageWrite[] => ms.map((m) => ({ message: m, event: eventFor(m) }));

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
    let db: TestDatabase;
    let store: Store;
    /** A new room of this test's own, created empty. */
    const newRoom = async (extra: Partial<Room> = {}) => {
      const r = room(`t-${unique()}`, extra);
      expect(await store.createRoom(r, { messages: [], events: [] })).toBe(true);
      return r;
    };
    beforeAll(async () => {
      db = await harness!.database();
      store = await db.open();
      await store.migrate();
    });
    afterAll(async () => {
      await store?.close();
      await db?.drop();
    });

    test("migrate applies every version once and is a no-op the second time", async () => {
      const fresh = await harness!.database();
      const s = await fresh.open();
      try {
        expect(await s.migrate()).toEqual(ALL_VERSIONS);
        expect(await s.migrate()).toEqual([]);
        await s.ping();
      } finally {
        await s.close();
        await fresh.drop();
      }
    });

    test("migrate from two connections at once applies each version exactly once", async () => {
      const fresh = await harness!.database();
      const [a, b] = [await fresh.open(), await fresh.open()];
      try {
        const [x, y] = await Promise.all([a.migrate(), b.migrate()]);
        expect([...x, ...y].sort()).toEqual(ALL_VERSIONS);
      } finally {
        await a.close();
        await b.close();
        await fresh.drop();
      }
    });

    test("the seq migration numbers existing messages per room in id order", async () => {
      const fresh = await harness!.database();
      const old = await fresh.open({ migrations: "before-seq" });
      try {
        expect(await old.migrate()).toEqual(ALL_VERSIONS.filter((v) => v < "0003"));
        const at = (i: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString();
        await fresh.raw(`insert into city_rooms (id, slug, name, is_default, created_at) values
          ('room_city_a', 'a', 'A', false, '${at(0)}'), ('room_city_b', 'b', 'B', false, '${at(0)}')`.replace(/false/g, name === "sqlite" ? "0" : "false"));
        const rows = ["m_city_01K000000000000000000000A3:a", "m_city_01K000000000000000000000A1:a", "m_city_01K000000000000000000000B1:b", "m_city_01K000000000000000000000A2:a"];
        for (const [i, r] of rows.entries()) {
          const [id, slug] = r.split(":");
          await fresh.raw(`insert into city_room_messages (id, room_id, author_user_id, body, created_at) values ('${id}', 'room_city_${slug}', 'u_x', '${id}', '${at(i)}')`);
        }
      } finally {
        await old.close();
      }
      const s = await fresh.open();
      try {
        expect(await s.migrate()).toEqual(ALL_VERSIONS.filter((v) => v >= "0003"));
        const a = await s.listMessages("room_city_a", { limit: 10 });
        expect(a.map((m) => [m.id.slice(-2), m.seq])).toEqual([["A1", 1], ["A2", 2], ["A3", 3]]);
        expect((await s.listMessages("room_city_b", { limit: 10 })).map((m) => m.seq)).toEqual([1]);
        expect(await s.lastSeqs(["room_city_a", "room_city_b"])).toEqual(new Map([["room_city_a", 3], ["room_city_b", 1]]));
        // numbering goes on after the migrated rows
        expect(await s.appendMessages("room_city_a", writes([message("room_city_a", "new")]))).toBe(4);
      } finally {
        await s.close();
        await fresh.drop();
      }
    });

    test("createRoom writes the room with its seed numbered from 1, and refuses a taken id or slug without writing", async () => {
      const r = room(`g-${unique()}`, { is_default: true, description: "Головна кімната міста" });
      const welcome = { ...message(r.id, "Ласкаво просимо"), author_user_id: null };
      const system: FeedEvent = { ...eventFor(welcome), kind: "system", user_id: null };
      expect(await store.createRoom(r, { messages: [welcome], events: [system] })).toBe(true);
      expect(await store.getRoom(r.id)).toEqual(r);

      const again = { ...message(r.id, "second welcome"), author_user_id: null };
      expect(await store.createRoom(r, { messages: [again], events: [] })).toBe(false);
      const sameSlugOtherId = { ...r, id: `${r.id}x`, name: "Other" };
      expect(await store.createRoom(sameSlugOtherId, { messages: [], events: [] })).toBe(false);
      expect(await store.getRoom(r.id)).toEqual(r);
      expect(await store.listMessages(r.id, { limit: 10 })).toEqual([{ ...welcome, seq: 1 }]);
      expect(await store.lastSeqs([r.id])).toEqual(new Map([[r.id, 1]]));
      const feed = await store.listFeed({ limit: 100 });
      expect(feed.filter((e) => e.room_id === r.id)).toEqual([system]);
    });

    test("getRoom of an unknown id is null", async () => {
      expect(await store.getRoom("room_city_nope")).toBeNull();
    });

    test("appendMessages numbers a batch after the room's last seq and returns the first", async () => {
      const r = await newRoom();
      expect(await store.appendMessages(r.id, writes([message(r.id, "a"), message(r.id, "b")]))).toBe(1);
      expect(await store.appendMessages(r.id, writes([message(r.id, "c")]))).toBe(2 + 1);
      const got = await store.listMessages(r.id, { limit: 10 });
      expect(got.map((m) => [m.seq, m.body])).toEqual([[1, "a"], [2, "b"], [3, "c"]]);
      expect(Object.keys(got[0]!).sort()).toEqual(["author_agent_id", "author_user_id", "body", "created_at", "id", "room_id", "seq"]);
    });

    test("appendMessages is atomic: a batch with a bad row writes nothing and uses no seq", async () => {
      const r = await newRoom();
      const good = message(r.id, "good");
      const err = await rejection(store.appendMessages(r.id, writes([good, good])));
      expect(err.message).toMatch(/unique|primary key|duplicate/i);
      expect(await store.listMessages(r.id, { limit: 10 })).toEqual([]);
      expect((await store.listFeed({ limit: 100 })).some((e) => e.room_id === r.id)).toBe(false);
      expect(await store.lastSeqs([r.id])).toEqual(new Map([[r.id, 0]]));
      expect(await store.appendMessages(r.id, writes([message(r.id, "next")]))).toBe(1);
    });

    test("appendMessages to an unknown room, or with a message of another room, fails and writes nothing", async () => {
      const r = await newRoom();
      const ghost = "room_city_ghost-" + unique();
      expect((await rejection(store.appendMessages(ghost, writes([message(ghost, "x")])))).message).toMatch(/does not exist/);
      expect((await rejection(store.appendMessages(r.id, writes([message(r.id, "mine"), message(ghost, "theirs")])))).message).toMatch(/not in room/);
      expect(await store.listMessages(r.id, { limit: 10 })).toEqual([]);
      expect(await store.lastSeqs([r.id, ghost])).toEqual(new Map([[r.id, 0]]));
    });

    test("appendMessagesMany commits several rooms' batches at once, each numbered as appendMessages would, a room twice in order", async () => {
      // a's id sorts after b's: an implementation that reorders the rooms (to lock them in order) must answer in the order given
      const tag = unique();
      const [a, b] = [await newRoom({ id: `room_city_z-${tag}`, slug: `z-${tag}` }), await newRoom({ id: `room_city_a-${tag}`, slug: `a-${tag}` })];
      await store.appendMessages(a.id, writes([message(a.id, "a1")]));
      const firsts = await store.appendMessagesMany([
        { roomId: a.id, batch: writes([message(a.id, "a2"), message(a.id, "a3")]) },
        { roomId: b.id, batch: writes([message(b.id, "b1")]) },
        { roomId: a.id, batch: writes([message(a.id, "a4")]) },
      ]);
      expect(firsts).toEqual([2, 1, 4]);
      expect((await store.listMessages(a.id, { limit: 10 })).map((m) => [m.seq, m.body])).toEqual([[1, "a1"], [2, "a2"], [3, "a3"], [4, "a4"]]);
      expect((await store.listMessages(b.id, { limit: 10 })).map((m) => [m.seq, m.body])).toEqual([[1, "b1"]]);
      const feed = await store.listFeed({ limit: 100 });
      expect(feed.filter((e) => e.room_id === b.id).map((e) => e.payload.body)).toEqual(["b1"]);
      expect(await store.appendMessagesMany([])).toEqual([]);
    });

    test("appendMessagesMany is all or nothing: one bad batch (an unknown room, a duplicate id) writes none of them", async () => {
      const [a, b] = [await newRoom(), await newRoom()];
      const ghost = "room_city_ghost-" + unique();
      const dup = message(b.id, "dup");
      for (const bad of [{ roomId: ghost, batch: writes([message(ghost, "x")]) }, { roomId: b.id, batch: writes([dup, dup]) }]) {
        const err = await rejection(store.appendMessagesMany([{ roomId: a.id, batch: writes([message(a.id, "lost")]) }, bad]));
        expect(err.message).toMatch(/does not exist|unique|primary key|duplicate/i);
      }
      expect(await store.lastSeqs([a.id, b.id])).toEqual(new Map([[a.id, 0], [b.id, 0]]));
      expect(await store.listMessages(a.id, { limit: 10 })).toEqual([]);
      expect((await store.listFeed({ limit: 100 })).some((e) => e.room_id === a.id || e.room_id === b.id)).toBe(false);
    });

    test("appendMessagesMany from two connections at once, the same rooms in opposite orders: no deadlock, every seq once", async () => {
      const [a, b] = [await newRoom(), await newRoom()];
      const other = await db.open();
      try {
        const both = (s: Store, first: Room, second: Room, i: number) =>
          s.appendMessagesMany([{ roomId: first.id, batch: writes([message(first.id, `${i}`)]) }, { roomId: second.id, batch: writes([message(second.id, `${i}`)]) }]);
        for (let i = 0; i < 20; i++) await Promise.all([both(store, a, b, i), both(other, b, a, i)]);
        expect(await store.lastSeqs([a.id, b.id])).toEqual(new Map([[a.id, 40], [b.id, 40]]));
      } finally {
        await other.close();
      }
    });

    test("writers on two connections share one room: every seq once, no gap, each batch contiguous", async () => {
      const r = await newRoom();
      const other = await db.open();
      try {
        const batches = Array.from({ length: 40 }, (_, i) => writes(Array.from({ length: 1 + (i % 4) }, (_, j) => message(r.id, `${i}.${j}`))));
        const firsts = await Promise.all(batches.map((b, i) => (i % 2 ? other : store).appendMessages(r.id, b)));
        const all = await store.listMessages(r.id, { limit: 1000 });
        const total = batches.reduce((n, b) => n + b.length, 0);
        expect(all.map((m) => m.seq)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
        batches.forEach((b, i) => {
          const seqs = b.map((w) => all.find((m) => m.id === w.message.id)!.seq);
          expect(seqs).toEqual(b.map((_, j) => firsts[i]! + j));
        });
      } finally {
        await other.close();
      }
    });

    test("messages page in seq order: latest N, before, after, oldest-first from a cursor", async () => {
      const r = await newRoom();
      const written = Array.from({ length: 12 }, (_, i) => message(r.id, `m${i}`, i % 2 ? "u_bob" : "u_alice"));
      await store.appendMessages(r.id, writes(written.slice(0, 5)));
      await store.appendMessages(r.id, writes(written.slice(5)));
      const bodies = (ms: Message[]) => ms.map((m) => m.body);

      expect(await store.listMessages(r.id, { limit: 3 })).toEqual(written.slice(9).map((m, i) => ({ ...m, seq: 10 + i })));
      expect(bodies(await store.listMessages(r.id, { limit: 4, beforeSeq: 7 }))).toEqual(["m2", "m3", "m4", "m5"]);
      expect(bodies(await store.listMessages(r.id, { limit: 100, afterSeq: 9 }))).toEqual(["m9", "m10", "m11"]);
      // afterSeq + limit keeps the newest: recovery replays the latest N when more were missed
      expect(bodies(await store.listMessages(r.id, { limit: 2, afterSeq: 4 }))).toEqual(["m10", "m11"]);
      // …and with `oldest` the first N after the cursor: a gap filler reads forward in pages
      expect(bodies(await store.listMessages(r.id, { limit: 2, afterSeq: 4, oldest: true }))).toEqual(["m4", "m5"]);
      expect(bodies(await store.listMessages(r.id, { limit: 10, afterSeq: 4, beforeSeq: 7, oldest: true }))).toEqual(["m4", "m5"]);
      expect(await store.listMessages(r.id, { limit: 10, afterSeq: 12 })).toEqual([]);
      expect(await store.listMessages("room_city_other", { limit: 10 })).toEqual([]);
      expect(await store.messageSeq(r.id, written[6]!.id)).toBe(7);
      expect(await store.messageSeq("room_city_other", written[6]!.id)).toBeNull();
      expect(await store.messageSeq(r.id, ids.make("message", tick()))).toBeNull();
    });

    test("lastSeqs answers many rooms in one call and leaves unknown rooms out", async () => {
      const [a, b] = [await newRoom(), await newRoom()];
      await store.appendMessages(a.id, writes([message(a.id, "1"), message(a.id, "2")]));
      expect(await store.lastSeqs([a.id, b.id, "room_city_unknown"])).toEqual(new Map([[a.id, 2], [b.id, 0]]));
      expect(await store.lastSeqs([])).toEqual(new Map());
    });

    test("listRooms orders by creation, pages, and carries last_event", async () => {
      const mine = [await newRoom(), await newRoom(), await newRoom()];
      const first = message(mine[1]!.id, "first");
      const m = message(mine[1]!.id, "latest");
      await store.appendMessages(mine[1]!.id, writes([first, m]));
      const rooms = (await store.listRooms({ limit: 200, offset: 0 })).filter((r) => mine.some((x) => x.id === r.id));
      expect(rooms.map((r) => r.id)).toEqual(mine.map((r) => r.id));
      expect(rooms[1]!.last_event).toBe(m.created_at);
      expect(rooms[0]!.last_event).toBeNull();
      const all = await store.listRooms({ limit: 200, offset: 0 });
      const at = all.findIndex((r) => r.id === mine[1]!.id);
      expect((await store.listRooms({ limit: 1, offset: at })).map((r) => r.id)).toEqual([mine[1]!.id]);
    });

    test("listFeed is newest-first and pages with before", async () => {
      const r = await newRoom();
      const written = Array.from({ length: 12 }, (_, i) => message(r.id, `f${i}`));
      await store.appendMessages(r.id, writes(written));
      const top = await store.listFeed({ limit: 12 });
      expect(top.map((e) => e.payload.message_id)).toEqual([...written].reverse().map((m) => m.id));
      const page2 = await store.listFeed({ limit: 5, before: top[4]!.id });
      expect(page2.map((e) => e.id)).toEqual(top.slice(5, 10).map((e) => e.id));
      expect(top[0]!.kind).toBe("room_message");
      expect(typeof top[0]!.payload.body).toBe("string");
    });

    test("unicode and quotes survive the round trip", async () => {
      const r = await newRoom();
      const body = `Привіт "місто" \\ ' 🚀 {"json": [1]} ,{}`;
      await store.appendMessages(r.id, writes([message(r.id, body)]));
      expect((await store.listMessages(r.id, { limit: 1 }))[0]!.body).toBe(body);
      const ev = (await store.listFeed({ limit: 100 })).find((e) => e.room_id === r.id)!;
      expect(ev.payload.body).toBe(body);
    });

    test("Second Me: one active session per user, messages in order, status, stats, clear", async () => {
      const u = `u_sm${unique()}`;
      const o = `u_other${unique()}`;
      const at = () => new Date(tick()).toISOString();
      const s1 = await store.secondmeSession(u, { id: ids.make("secondmeSession", tick()), created_at: at() });
      expect(await store.secondmeSession(u, { id: ids.make("secondmeSession", tick()), created_at: at() })).toBe(s1);
      const other = await store.secondmeSession(o, { id: ids.make("secondmeSession", tick()), created_at: at() });
      expect(other).not.toBe(s1);
      const msg = (role: "user" | "assistant", content: string, extra: Partial<SecondmeMessage> = {}): SecondmeMessage => {
        const now = tick();
        return {
          id: ids.make("secondmeMessage", now), session_id: s1, user_id: u, role, content, tokens_used: null, latency_ms: null,
          status: role === "user" ? "pending" : "answered", error: null, created_at: new Date(now).toISOString(), ...extra,
        };
      };
      const q1 = msg("user", "привіт?");
      const a1 = msg("assistant", "Вітаю!", { tokens_used: 42, latency_ms: 120 });
      const q2 = msg("user", "ще раз");
      for (const m of [q1, a1, q2]) await store.appendSecondmeMessage(m);
      await store.setSecondmeStatus(q1.id, "answered", null);
      await store.setSecondmeStatus(q2.id, "unanswered", "agents_core_timeout");
      const history = await store.listSecondmeMessages(u, 10);
      expect(history.map((m) => [m.role, m.content, m.status, m.error])).toEqual([
        ["user", "привіт?", "answered", null],
        ["assistant", "Вітаю!", "answered", null],
        ["user", "ще раз", "unanswered", "agents_core_timeout"],
      ]);
      expect(history[1]).toEqual(a1);
      expect((await store.listSecondmeMessages(u, 2)).map((m) => m.content)).toEqual(["Вітаю!", "ще раз"]);
      expect(await store.secondmeStats(u)).toEqual({ sessions: 1, messages: 3, total_tokens: 42, avg_latency_ms: 120, last_interaction: q2.created_at });
      expect(await store.secondmeStats("u_nobody")).toEqual({ sessions: 0, messages: 0, total_tokens: 0, avg_latency_ms: null, last_interaction: null });
      expect(await store.clearSecondme(u)).toBe(3);
      expect(await store.listSecondmeMessages(u, 10)).toEqual([]);
      expect((await store.secondmeStats(u)).sessions).toBe(0);
      expect(await store.secondmeSession(o, { id: "smsess_unused", created_at: at() })).toBe(other);
    });

    test("listRoomMatrixMappings returns every room's mapping by slug", async () => {
      const s = unique();
      await store.createRoom(room(`energy-${s}`, { matrix_room_id: "!abc:daarion.space", matrix_room_alias: "#city_energy:daarion.space" }), { messages: [], events: [] });
      await store.createRoom(room(`atomic-${s}`), { messages: [], events: [] });
      const map = (await store.listRoomMatrixMappings()).filter((m) => m.slug.endsWith(s));
      expect(map).toEqual([
        { id: `room_city_atomic-${s}`, slug: `atomic-${s}`, matrix_room_id: null, matrix_room_alias: null },
        { id: `room_city_energy-${s}`, slug: `energy-${s}`, matrix_room_id: "!abc:daarion.space", matrix_room_alias: "#city_energy:daarion.space" },
      ]);
    });

    test("messageCountsSince counts each room's messages from a time on", async () => {
      const [a, b] = [await newRoom(), await newRoom()];
      const t0 = new Date(clock + 1).toISOString();
      await store.appendMessages(a.id, writes([message(a.id, "1"), message(a.id, "2")]));
      await store.appendMessages(b.id, writes([message(b.id, "3")]));
      const counts = await store.messageCountsSince(t0);
      expect([counts.get(a.id), counts.get(b.id)]).toEqual([2, 1]);
      expect((await store.messageCountsSince(new Date(clock + 10_000).toISOString())).get(a.id)).toBeUndefined();
    });

    describe("living map log", () => {
      const lmEvent = (i: number, extra: Partial<LivingMapEventWrite> = {}): LivingMapEventWrite => ({
        id: crypto.randomUUID(), timestamp: new Date(Date.UTC(2026, 0, 2, 0, 0, i)).toISOString(), event_type: `node.metrics.n${i}`,
        payload: { node_id: `n${i}`, cpu: i / 10, nested: { ok: true } }, source: "local", entity_id: `node:n${i}`, entity_type: "node", stream_seq: null, ...extra,
      });

      test("append keeps order, skips an id or a stream sequence it already has, and pages newest first", async () => {
        const db = await harness!.database();
        const s = await db.open();
        try {
          await s.migrate();
          const events = Array.from({ length: 10 }, (_, i) => lmEvent(i, { stream_seq: 100 + i, source: "jetstream" }));
          expect(await s.appendLivingMapEvents(events.slice(0, 6))).toBe(6);
          // a redelivered batch (same ids, same stream sequences) and a new id on a known stream seq
          expect(await s.appendLivingMapEvents([...events.slice(4, 10), { ...lmEvent(99), stream_seq: 101 }])).toBe(4);
          expect(await s.livingMapLastSeq()).toEqual({ seq: expect.any(Number), streamSeq: 109 });
          const newest = await s.listLivingMapHistory({ limit: 3 });
          expect(newest.map((e) => e.event_type)).toEqual(["node.metrics.n9", "node.metrics.n8", "node.metrics.n7"]);
          expect(newest[0]).toEqual({ ...events[9]!, seq: newest[0]!.seq });
          const older = await s.listLivingMapHistory({ limit: 3, beforeSeq: newest[2]!.seq });
          expect(older.map((e) => e.event_type)).toEqual(["node.metrics.n6", "node.metrics.n5", "node.metrics.n4"]);
          const since = await s.listLivingMapHistory({ since: events[8]!.timestamp, limit: 100 });
          expect(since.map((e) => e.event_type)).toEqual(["node.metrics.n9", "node.metrics.n8"]);
          const seq3 = await s.livingMapEventSeq(events[3]!.id);
          expect((await s.livingMapEventsAfter(seq3!, 2)).map((e) => e.event_type)).toEqual(["node.metrics.n4", "node.metrics.n5"]);
          expect(await s.livingMapEventSeq(crypto.randomUUID())).toBeNull();
          expect(await s.livingMapEventSeq("not-a-uuid")).toBeNull();
        } finally {
          await s.close();
          await db.drop();
        }
      });

      test("snapshots: the newest comes back; retention prunes old events and old snapshots but the newest", async () => {
        const db = await harness!.database();
        const s = await db.open();
        try {
          await s.migrate();
          expect(await s.latestLivingMapSnapshot()).toBeNull();
          const at = (d: number) => new Date(Date.UTC(2026, 0, d)).toISOString();
          await s.saveLivingMapSnapshot({ scene: { v: 1 }, lastEventSeq: 1, lastStreamSeq: null, createdAt: at(1) });
          await s.saveLivingMapSnapshot({ scene: { v: 2, layers: { nodes: [{ id: "node:x" }] } }, lastEventSeq: 7, lastStreamSeq: 70, createdAt: at(2) });
          expect(await s.latestLivingMapSnapshot()).toEqual({ scene: { v: 2, layers: { nodes: [{ id: "node:x" }] } }, lastEventSeq: 7, lastStreamSeq: 70, createdAt: at(2) });
          await s.appendLivingMapEvents([lmEvent(1, { timestamp: at(1) }), lmEvent(2, { timestamp: at(1) }), lmEvent(3, { timestamp: at(5) })]);
          expect(await s.pruneLivingMap(at(3), 1)).toBe(1);
          expect(await s.pruneLivingMap(at(3), 100)).toBe(1);
          expect((await s.listLivingMapHistory({ limit: 10 })).map((e) => e.event_type)).toEqual(["node.metrics.n3"]);
          // both snapshots are older than the cut, but the newest is always kept
          expect((await s.latestLivingMapSnapshot())!.lastEventSeq).toBe(7);
        } finally {
          await s.close();
          await db.drop();
        }
      });
    });
  });
}
