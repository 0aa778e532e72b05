import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { SQLITE_MIGRATIONS } from "../../src/storage/migrations.ts";
import { SqliteStore } from "../../src/storage/sqlite.ts";
import { message, room, storeContract, writes } from "./store.contract.ts";

// Both places the embedded store can commit (SQLITE_WRITER): the writer thread and the event loop.
for (const writer of ["thread", "inline"] as const) {
  storeContract(`sqlite (${writer})`, {
    database: async () => {
      const dir = mkdtempSync(path.join(tmpdir(), "dc-store-"));
      const file = path.join(dir, "city.sqlite");
      return {
        open: async (o) => new SqliteStore({ file, writer, migrations: o?.migrations === "before-seq" ? SQLITE_MIGRATIONS.filter((m) => m.version < "0003") : undefined }),
        raw: async (sql) => {
          const db = new Database(file);
          try {
            db.exec(sql);
          } finally {
            db.close();
          }
        },
        drop: async () => rmSync(dir, { recursive: true, force: true }),
      };
    },
  });
}

// SQLite only: its one writer thread takes requests in order, which is what lets the message
// writer send a room's next batch before the last is answered (Store.appendsInOrder). PostgreSQL
// does not claim it: two in-flight appends run on two pooled connections.
describe("SqliteStore: appends in call order", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "dc-store-order-"));
  const store = new SqliteStore({ file: path.join(dir, "city.sqlite"), writer: "thread" });
  afterAll(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a room's appends in flight together are numbered in call order, a refused one in the middle taking no seq", async () => {
    await store.migrate();
    expect(store.appendsInOrder).toBe(true);
    const rooms = ["a", "b", "c"].map((s) => `room_city_order_${s}`);
    for (const id of rooms) await store.createRoom(room(id.slice(10)), { messages: [], events: [] });
    const dup = message(rooms[0]!, "twice");
    // 60 appends over three rooms, none awaited before the next is called; one bad batch among them.
    const calls = Array.from({ length: 60 }, (_, i) => {
      const r = rooms[i % 3]!;
      const batch = i === 30 ? [dup, dup] : Array.from({ length: 1 + (i % 3) }, (_, j) => message(r, `o${i}.${j}`));
      const first = store.appendMessages(r, writes(batch));
      first.catch(() => {});
      return { room: r, first };
    });
    const firsts = await Promise.all(calls.map((c) => c.first.catch(() => null)));
    expect(firsts.map((f, i) => (f === null ? i : -1)).filter((i) => i >= 0)).toEqual([30]);
    for (const id of rooms) {
      const mine = firsts.filter((f, i) => calls[i]!.room === id && f !== null) as number[];
      expect(mine[0]).toBe(1);
      expect(mine).toEqual([...mine].sort((x, y) => x - y));
      // every seq once, no gap, in call order
      const stored = await store.listMessages(id, { limit: 200 });
      expect(stored.map((m) => m.seq)).toEqual(Array.from({ length: stored.length }, (_, k) => k + 1));
      const order = stored.map((m) => Number(m.body.slice(1).split(".")[0]));
      expect(order).toEqual([...order].sort((x, y) => x - y));
    }
  });
});

test("SqliteStore: opening a file another process has locked waits for the lock instead of failing", async () => {
  // Both of the store's connections (the main one and the writer thread's) set their pragmas on
  // open; another process holds the file for 300 ms, so it is busy for both.
  const dir = mkdtempSync(path.join(tmpdir(), "dc-store-busy-"));
  const file = path.join(dir, "city.sqlite");
  const holder = Bun.spawn(
    ["bun", "-e", `const { Database } = require("bun:sqlite"); const db = new Database(${JSON.stringify(file)}, { create: true });
      db.exec("BEGIN EXCLUSIVE"); db.exec("CREATE TABLE holder (x)"); console.log("locked");
      setTimeout(() => { db.exec("COMMIT"); db.close(); }, 300);`],
    { stdout: "pipe", stderr: "inherit" },
  );
  let store: SqliteStore | null = null;
  try {
    const reader = holder.stdout.getReader();
    let out = "";
    while (!out.includes("locked")) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the lock holder exited before locking");
      out += new TextDecoder().decode(value);
    }
    store = new SqliteStore({ file, writer: "thread" });
    await store.migrate();
    await store.probeWrite();
    expect(await store.listRooms({ limit: 1, offset: 0 })).toEqual([]);
  } finally {
    await holder.exited;
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

describe("SqliteStore: SQLITE_WRITER=auto", () => {
  const dirs: string[] = [];
  const fresh = () => {
    const dir = mkdtempSync(path.join(tmpdir(), "dc-store-auto-"));
    dirs.push(dir);
    return path.join(dir, "city.sqlite");
  };
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  /** A write timer that makes the inline writes take `durations` ms, one after another (then 1 ms each). */
  const scripted = (durations: number[]) => {
    let t = 0;
    let calls = 0;
    return () => (calls++ % 2 === 0 ? t : (t += durations.shift() ?? 1));
  };

  test("writes inline until three in a row are slower than the limit, then on the writer thread for good, and nothing is lost or reordered", async () => {
    const moved: string[] = [];
    // Any disk counts as fast; the writes take what the script says (limit 10 ms).
    const store = new SqliteStore({
      file: fresh(), writer: "auto", fastFsyncMs: Infinity, inlineWriteMaxMs: 10, timeMs: scripted([50, 20, 1, 20, 20, 20]), onWriterMoved: (why) => moved.push(why),
    });
    try {
      await store.migrate();
      expect([store.writerMode, store.commitsOnCaller]).toEqual(["inline", true]);
      const r = "room_city_auto";
      await store.createRoom(room("auto"), { messages: [], events: [] }); // 50 ms: one slow write (a preempted one) does not move it
      const seqs = [];
      for (let i = 1; i <= 4; i++) {
        seqs.push(await store.appendMessages(r, writes([message(r, `inline ${i}`)]))); // 20, 1 (the run starts again), 20, 20
        expect([i, store.writerMode]).toEqual([i, "inline"]);
      }
      expect(moved).toEqual([]);
      seqs.push(await store.appendMessages(r, writes([message(r, "inline 5")]))); // the third 20 in a row
      expect([store.writerMode, store.commitsOnCaller]).toEqual(["thread", false]);
      expect(moved).toHaveLength(1);
      expect(moved[0]).toContain("3 inline writes in a row");
      // the thread's connection sees what the inline one committed, and numbers after it
      seqs.push(...(await Promise.all([6, 7, 8].map((i) => store.appendMessages(r, writes([message(r, `thread ${i}`)]))))));
      expect(seqs).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect((await store.listMessages(r, { limit: 20 })).map((m) => m.body)).toEqual([1, 2, 3, 4, 5].map((i) => `inline ${i}`).concat([6, 7, 8].map((i) => `thread ${i}`)));
      expect(moved).toHaveLength(1);
    } finally {
      await store.close();
    }
  });

  test("one inline write ten times over the limit moves it at once", async () => {
    const moved: string[] = [];
    const store = new SqliteStore({ file: fresh(), writer: "auto", fastFsyncMs: Infinity, inlineWriteMaxMs: 10, timeMs: scripted([101]), onWriterMoved: (why) => moved.push(why) });
    try {
      await store.migrate();
      await store.createRoom(room("auto"), { messages: [], events: [] });
      expect(store.writerMode).toBe("thread");
      expect(moved).toEqual([expect.stringContaining("over 100 ms")]);
      expect(await store.appendMessages("room_city_auto", writes([message("room_city_auto", "after")]))).toBe(1);
    } finally {
      await store.close();
    }
  });

  test("a disk slower than the probe's limit starts on the thread; a fast one, or NORMAL, starts inline", async () => {
    const slow = new SqliteStore({ file: fresh(), writer: "auto", fastFsyncMs: -1 });
    const fast = new SqliteStore({ file: fresh(), writer: "auto", fastFsyncMs: Infinity });
    const normal = new SqliteStore({ file: fresh(), writer: "auto", synchronous: "NORMAL", fastFsyncMs: -1 });
    try {
      expect([slow.writerMode, fast.writerMode, normal.writerMode]).toEqual(["thread", "inline", "inline"]);
      // the probe leaves nothing behind in the database's directory
      expect(readdirSync(dirs.at(-3)!).filter((f) => f.startsWith(".fsync-probe"))).toEqual([]);
    } finally {
      for (const s of [slow, fast, normal]) await s.close();
    }
  });
});
