/**
 * MessageWriter on a real (in-memory) SQLite store: group commit per room, seq numbering, order,
 * failure, drain.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { systemClock } from "../../src/clock.ts";
import { IdGenerator } from "../../src/ids.ts";
import { silentLogger } from "../../src/log.ts";
import { feedPayload, MessageWriter, type MessageWriterOptions } from "../../src/modules/city/writer.ts";
import { SqliteStore } from "../../src/storage/sqlite.ts";
import { waitFor } from "../helpers/city.ts";
import type { Message, Room } from "../../src/storage/store.ts";

const store = new SqliteStore({ file: ":memory:" });
const room = (slug: string): Room => ({
  id: `room_city_${slug}`, slug, name: slug, description: null, is_default: false, created_at: new Date().toISOString(),
  created_by: null, matrix_room_id: null, matrix_room_alias: null,
});
let n = 0;
/** A new empty room of the calling test's own. */
const newRoom = async () => {
  const r = room(`w${n++}-${Math.random().toString(36).slice(2, 7)}`);
  await store.createRoom(r, { messages: [], events: [] });
  return r.id;
};

beforeAll(() => store.migrate());
afterAll(() => store.close());

/** A writer on `store` (or `extra.store`) that records its committed batches in `committed`. */
function writer(committed: Message[][], extra: Partial<MessageWriterOptions> = {}) {
  return new MessageWriter({ store, ids: new IdGenerator(), clock: systemClock, log: silentLogger, onCommitted: (b) => committed.push(b), maxBatch: 64, ...extra });
}
const draft = (roomId: string, body: string) => ({ roomId, authorUserId: "u_a", authorAgentId: null, body });


describe("MessageWriter", () => {
  test("concurrent writes to a room are committed in a few batches, in call order, seq 1, 2, 3, …", async () => {
    const r = await newRoom();
    const committed: Message[][] = [];
    const w = writer(committed);
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => w.write(draft(r, `m${i}`))));
    expect(results.map((m) => m.body)).toEqual(Array.from({ length: 200 }, (_, i) => `m${i}`));
    expect(results.map((m) => m.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(results.map((m) => m.id)).toEqual(results.map((m) => m.id).sort());
    // the first write goes alone; the rest queue behind it and go in batches of at most 64
    expect(committed.length).toBeLessThan(200);
    expect(Math.max(...committed.map((b) => b.length))).toBe(64);
    expect(committed.flat()).toEqual(results);
    expect(await store.listMessages(r, { limit: 500 })).toEqual(results);
    const feed = await store.listFeed({ limit: 1 });
    expect(feed[0]).toMatchObject({ kind: "room_message", room_id: r, user_id: "u_a", payload: feedPayload(results.at(-1)!) });
  });

  test("pipelined: the next batch goes to the store before the last is answered; answers and publications keep send order", async () => {
    const r = await newRoom();
    // The store's answers are held until the test releases them, in the order it chooses.
    const held: { release: () => void; size: number }[] = [];
    const gated = Object.create(store) as typeof store;
    gated.appendMessages = (roomId, batch) => {
      const real = store.appendMessages(roomId, batch);
      return new Promise((resolve, reject) => held.push({ size: batch.length, release: () => real.then(resolve, reject) }));
    };
    const committed: Message[][] = [];
    const w = writer(committed, { store: gated, pipelineDepth: 2 });
    const first = w.write(draft(r, "a"));
    await Bun.sleep(0);
    const second = w.write(draft(r, "b"));
    await Bun.sleep(0);
    const third = w.write(draft(r, "c"));
    await Bun.sleep(0);
    // Two batches in flight (a, then b) before either is answered; c waits for a free slot.
    expect(held.map((h) => h.size)).toEqual([1, 1]);
    held[1]!.release(); // the second answer comes first: nothing is published out of order
    await Bun.sleep(1);
    expect(committed).toEqual([]);
    held[0]!.release();
    expect((await first).seq).toBe(1);
    expect((await second).seq).toBe(2);
    await waitFor(() => held.length, (n) => n === 3);
    held[2]!.release();
    expect((await third).seq).toBe(3);
    expect(committed.map((b) => b.map((m) => m.body))).toEqual([["a"], ["b"], ["c"]]);
  });

  test("depth 1: a room's next batch waits for the last answer", async () => {
    const r = await newRoom();
    const held: (() => void)[] = [];
    const gated = Object.create(store) as typeof store;
    gated.appendMessages = (roomId, batch) => {
      const real = store.appendMessages(roomId, batch);
      return new Promise((resolve, reject) => held.push(() => real.then(resolve, reject)));
    };
    const w = writer([], { store: gated, pipelineDepth: 1 });
    const a = w.write(draft(r, "a"));
    const b = w.write(draft(r, "b"));
    await Bun.sleep(1);
    expect(held).toHaveLength(1);
    held[0]!();
    expect((await a).seq).toBe(1);
    await waitFor(() => held.length, (n) => n === 2);
    held[1]!();
    expect((await b).seq).toBe(2);
  });

  test("gathering a turn: the messages written in one turn of the loop go in one commit, the next turn's in the next", async () => {
    const r = await newRoom();
    const sizes = (gatherTurn: (() => boolean) | undefined) => {
      const committed: Message[][] = [];
      const w = writer(committed, { gatherTurn });
      return { w, committed };
    };
    const turn = () => new Promise<void>((res) => setImmediate(res));
    // Without it, the inline store commits the first message as it is written, alone.
    const plain = sizes(undefined);
    await Promise.all(["a", "b", "c"].map((b) => plain.w.write(draft(r, b))));
    expect(plain.committed.map((b) => b.length)).toEqual([1, 2]);
    const gathering = sizes(() => true);
    const first = ["d", "e", "f", "g"].map((b) => gathering.w.write(draft(r, b)));
    expect(gathering.committed).toEqual([]); // nothing committed inside the turn that wrote them
    await turn();
    const second = ["h", "i"].map((b) => gathering.w.write(draft(r, b)));
    const all = await Promise.all([...first, ...second]);
    expect(gathering.committed.map((b) => b.map((m) => m.body))).toEqual([["d", "e", "f", "g"], ["h", "i"]]);
    expect(all.map((m) => m.seq)).toEqual([4, 5, 6, 7, 8, 9]);
  });

  test("gathering a turn: the rooms written in one turn share one commit; when it fails, each room is retried alone", async () => {
    const [a, b] = [await newRoom(), await newRoom()];
    const ghost = "room_city_ghost-" + Math.random().toString(36).slice(2, 7);
    const calls: string[] = [];
    const counted = Object.create(store) as typeof store;
    counted.appendMessages = (roomId, batch) => (calls.push(`one ${roomId === a ? "a" : roomId === b ? "b" : "ghost"} ${batch.length}`), store.appendMessages(roomId, batch));
    counted.appendMessagesMany = (batches) => (calls.push(`many ${batches.map((x) => x.batch.length).join("+")}`), store.appendMessagesMany(batches));
    const committed: Message[][] = [];
    const w = writer(committed, { store: counted, gatherTurn: () => true });
    const got = await Promise.all([w.write(draft(a, "a1")), w.write(draft(b, "b1")), w.write(draft(a, "a2"))]);
    expect(calls).toEqual(["many 2+1"]);
    expect(got.map((m) => [m.body, m.seq])).toEqual([["a1", 1], ["b1", 1], ["a2", 2]]);
    expect(committed.map((m) => m.map((x) => x.body))).toEqual([["a1", "a2"], ["b1"]]);
    calls.length = 0;
    // A room that does not exist fails the shared commit; the others' messages still commit.
    const outcomes = await Promise.allSettled([w.write(draft(a, "a3")), w.write(draft(ghost, "g")), w.write(draft(b, "b2"))]);
    expect(calls).toEqual(["many 1+1+1", "one a 1", "one ghost 1", "one b 1"]);
    expect(outcomes.map((o) => (o.status === "fulfilled" ? o.value.seq : (o.reason as { code?: string }).code))).toEqual([3, "store_unavailable", 2]);
    expect((await store.listMessages(a, { limit: 10 })).map((m) => m.body)).toEqual(["a1", "a2", "a3"]);
  });

  test("two writers on one store share a room's numbering", async () => {
    const r = await newRoom();
    const [a, b] = [writer([]), writer([])];
    const got = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).write(draft(r, `x${i}`))));
    expect(got.map((m) => m.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
  });

  test("a failed commit rejects its writes with store_unavailable and publishes nothing; other rooms carry on", async () => {
    const r = await newRoom();
    const committed: Message[][] = [];
    const w = writer(committed);
    const lost = w.write(draft("room_city_missing", "nowhere"));
    const fine = w.write(draft(r, "somewhere"));
    await expect(lost).rejects.toMatchObject({ code: "store_unavailable", status: 503 });
    expect(await fine).toMatchObject({ body: "somewhere", seq: 1 });
    expect(committed.flat().map((x) => x.body)).toEqual(["somewhere"]);
    expect(await store.listMessages("room_city_missing", { limit: 10 })).toEqual([]);
  });

  test.each([["one at a time", false], ["gathering turns", true]] as const)("drain waits for queued writes, then refuses new ones (%s)", async (_, gather) => {
    const r = await newRoom();
    const committed: Message[][] = [];
    const w = writer(committed, { maxBatch: 4, gatherTurn: () => gather });
    const pending = Array.from({ length: 10 }, (_, i) => w.write(draft(r, `d${i}`)));
    await w.drain();
    expect(committed.flat().length).toBe(10);
    expect((await Promise.all(pending)).length).toBe(10);
    await expect(w.write(draft(r, "late"))).rejects.toMatchObject({ code: "shutting_down" });
  });

  test("the feed snippet is the body, cut to 140 characters with an ellipsis", () => {
    const m = { id: "m", room_id: "r", author_user_id: null, author_agent_id: null, body: "ї".repeat(200), created_at: "" };
    const p = feedPayload(m);
    expect([...(p.snippet as string)].length).toBe(140);
    expect((p.snippet as string).endsWith("…")).toBe(true);
    expect(feedPayload({ ...m, body: "short" })).toEqual({ body: "short", snippet: "short", message_id: "m" });
  });
});
