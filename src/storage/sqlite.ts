/**
 * SqliteStore: the embedded default store (SPEC "Engines"), a `bun:sqlite` file in DATA_DIR in WAL
 * mode. Single machine only: one process should own the file (a second process can share it, and
 * SQLite serialises the writers, but the realtime fan-out between them needs NATS).
 *
 * Where writes run (SQLITE_WRITER, {@link SqliteWriterMode}): on this thread (`inline`), in the
 * call that asks for them, or on a writer thread (`sqlite-writer.worker.ts`, `thread`) with its own
 * connection, so that a commit and its fsync never block the event loop. `auto` (the default)
 * writes inline when the disk's fsync is fast (a probe at open: median ≤ 0.5 ms, or no fsync per
 * commit under `NORMAL`) and moves to the thread for good once inline writes are slow (three in a
 * row over {@link INLINE_WRITE_MAX_MS}, or one over ten times it); otherwise it uses the thread
 * from the start. Inline, a message is committed and published in the turn after the one that
 * read it (the message writer commits every room's messages of a turn together, see
 * `Store.commitsOnCaller`), with no hand-off to the thread and no wait for its answer: in 12
 * interleaved pairs at 100 and 300 msg/s × 1,000 sockets (bench/README.md, "2026-12-02") its p50
 * against raw Bun's was lower in 11, its p99 in 10, and the server's CPU 4–23% lower in all 12.
 * Reads use this thread's connection either way (WAL readers do not wait for the writer). A
 * `:memory:` database cannot be shared between threads and always writes inline.
 */
import { Database } from "bun:sqlite";
import { closeSync, fdatasyncSync, mkdirSync, openSync, rmSync, statfsSync, writeSync } from "node:fs";
import path from "node:path";
import { checksum, SQLITE_MIGRATIONS, type Migration } from "./migrations.ts";
import { configureConnection, livingMapRow, sqliteWrites, type SqliteWriteOp, type SqliteWrites } from "./sqlite-writes.ts";
import type {
  FeedEvent, LivingMapEvent, LivingMapEventWrite, LivingMapSnapshotRow, Message, MessageQuery, MessageWrite, NewMessage, Room, RoomBatch, RoomMatrixMapping, RoomPatch, RoomSummary, SecondmeMessage, SecondmeStats, SecondmeStatus, Store,
} from "./store.ts";
import { WorkerCalls } from "../workers/calls.ts";
import { workerEntry } from "../workers/entry.ts";

const MESSAGE_SELECT = `select id, room_id, seq, author_user_id, author_agent_id, body, created_at from city_room_messages
  where room_id = ?1 and (?2 is null or seq < ?2) and (?3 is null or seq > ?3)`;

const LIVING_MAP_SELECT = "select id, seq, timestamp, event_type, payload, source, entity_id, entity_type, stream_seq from living_map_history";

interface LivingMapRow extends Omit<LivingMapEvent, "payload"> {
  payload: string;
}

const toLivingMapEvent = (r: LivingMapRow): LivingMapEvent => ({ ...r, payload: JSON.parse(r.payload) as Record<string, unknown> });

interface RoomRow extends Omit<Room, "is_default"> {
  is_default: number;
}
interface FeedRow extends Omit<FeedEvent, "payload"> {
  payload: string;
}

/**
 * Where the embedded store's writes run (SQLITE_WRITER): `inline` on the event loop, `thread` on the
 * writer thread, `auto` inline while the disk's fsync is fast (see the module comment).
 */
export type SqliteWriterMode = "auto" | "inline" | "thread";

/**
 * An `auto` store moves its writes to the writer thread after {@link SLOW_WRITES_TO_MOVE} inline
 * writes in a row slower than this, ms, or one slower than ten times it.
 */
export const INLINE_WRITE_MAX_MS = 10;
/**
 * Slow inline writes in a row that move an `auto` store to the thread. One was not enough: on a
 * loaded host the OS preempts a write now and then (the first full bench run with a one-write
 * rule moved in most runs, after writes of 10–58 ms, the first of a fresh process among them),
 * where a slow disk is slow every time.
 */
export const SLOW_WRITES_TO_MOVE = 3;
/** An `auto` store writes inline when the probe's median fsync is at most this, ms. */
const FAST_FSYNC_MS = 0.5;

export interface SqliteStoreOptions {
  /** Database file; `:memory:` for a throwaway store. */
  file: string;
  /** `FULL`: every commit is fsynced before it is acknowledged. `NORMAL`: survives process crashes only. */
  synchronous?: "FULL" | "NORMAL";
  /** Where writes run (default `auto`). */
  writer?: SqliteWriterMode;
  /** Called when an `auto` store moves its writes to the writer thread, with why. */
  onWriterMoved?: (why: string) => void;
  /** `auto`: inline writes slower than this (three in a row, or one ten times over) move the writes to the thread, ms (default {@link INLINE_WRITE_MAX_MS}). */
  inlineWriteMaxMs?: number;
  /** `auto`: write inline when the probe's median fsync is at most this, ms (default 0.5). */
  fastFsyncMs?: number;
  /** `auto`: what times an inline write, ms (default `performance.now`; tests script it). */
  timeMs?: () => number;
  /** Migrations to apply (default: the embedded list). */
  migrations?: Migration[];
}

/** Below this much free space on its disk the embedded store reports itself full (readiness). */
const MIN_FREE_BYTES = 256 * 1024;

export class SqliteStore implements Store {
  readonly engine = "sqlite" as const;
  /** One writer thread takes requests in order. */
  readonly appendsInOrder = true;
  private readonly file: string;
  private readonly db: Database;
  private readonly migrations: Migration[];
  private readonly writer: Writer;
  private closed = false;

  constructor(opts: SqliteStoreOptions) {
    const synchronous = opts.synchronous ?? "FULL";
    this.file = opts.file;
    if (opts.file !== ":memory:") mkdirSync(path.dirname(opts.file), { recursive: true });
    this.db = new Database(opts.file, { create: true, strict: true });
    configureConnection(this.db, synchronous);
    this.migrations = opts.migrations ?? SQLITE_MIGRATIONS;
    const mode = opts.writer ?? "auto";
    if (opts.file === ":memory:" || mode === "inline") this.writer = inline(sqliteWrites(this.db));
    else if (mode === "thread") this.writer = new WriterThread(opts.file, synchronous);
    else if (synchronous === "NORMAL" || fsyncIsFast(path.dirname(opts.file), opts.fastFsyncMs ?? FAST_FSYNC_MS)) {
      const startThread = () => new WriterThread(opts.file, synchronous);
      this.writer = new AdaptiveWriter(inline(sqliteWrites(this.db)), startThread, opts.inlineWriteMaxMs ?? INLINE_WRITE_MAX_MS, opts.timeMs ?? (() => performance.now()), opts.onWriterMoved);
    } else this.writer = new WriterThread(opts.file, synchronous);
  }

  /** Where writes run now: on this thread, or on the writer thread. */
  get writerMode(): "inline" | "thread" {
    return this.writer.mode;
  }

  /** True while writes run inline (see {@link Store.commitsOnCaller}). */
  get commitsOnCaller(): boolean {
    return this.writer.mode === "inline";
  }

  async migrate(): Promise<string[]> {
    const db = this.db;
    // BEGIN IMMEDIATE takes the write lock first, so a second process waits (busy_timeout) and
    // then finds the versions already recorded.
    db.exec("BEGIN IMMEDIATE");
    try {
      db.exec("create table if not exists schema_migrations (version text primary key, checksum text not null, applied_at text not null)");
      const applied = new Map(
        db.query<{ version: string; checksum: string }, []>("select version, checksum from schema_migrations").all().map((r) => [r.version, r.checksum]),
      );
      const done: string[] = [];
      for (const m of [...this.migrations].sort((a, b) => a.version.localeCompare(b.version))) {
        const sum = checksum(m.sql);
        const prior = applied.get(m.version);
        if (prior !== undefined) {
          if (prior !== sum) throw new Error(`migrate: ${m.version} changed after it was applied (checksum ${prior} → ${sum})`);
          continue;
        }
        db.exec(m.sql);
        db.query("insert into schema_migrations (version, checksum, applied_at) values (?, ?, ?)").run(m.version, sum, new Date().toISOString());
        done.push(m.version);
      }
      db.exec("COMMIT");
      return done;
    } catch (err) {
      db.exec("ROLLBACK");
      throw err;
    }
  }

  async ping(): Promise<void> {
    this.db.query("select 1").get();
  }

  /**
   * Free space first: on a full disk SQLite keeps rewriting its WAL in place, so a one-row update
   * can still succeed while every insert fails.
   * @throws Error when the disk holding the database has less than 256 KiB free, or the write fails
   */
  async probeWrite(): Promise<void> {
    if (this.file !== ":memory:") {
      const fs = statfsSync(path.dirname(this.file));
      const free = fs.bavail * fs.bsize;
      if (free < MIN_FREE_BYTES) throw new Error(`sqlite: the disk holding ${path.basename(this.file)} is full (${free} bytes free)`);
    }
    await this.writer.run("probeWrite", new Date().toISOString());
  }

  async listRooms(page: { limit: number; offset: number }): Promise<RoomSummary[]> {
    const rows = this.db
      .query<RoomRow & { last_event: string | null }, [number, number]>(
        `select r.*, (select max(m.created_at) from city_room_messages m where m.room_id = r.id) as last_event
         from city_rooms r order by r.created_at, r.id limit ? offset ?`,
      )
      .all(page.limit, page.offset);
    return rows.map((r) => ({ ...toRoom(r), last_event: r.last_event }));
  }

  async getRoom(id: string): Promise<Room | null> {
    const row = this.db.query<RoomRow, [string]>("select * from city_rooms where id = ?").get(id);
    return row ? toRoom(row) : null;
  }

  async createRoom(room: Room, seed: { messages: NewMessage[]; events: FeedEvent[] }): Promise<boolean> {
    return this.writer.run("createRoom", room, seed);
  }

  async appendMessages(roomId: string, batch: MessageWrite[]): Promise<number> {
    return this.writer.run("appendMessages", roomId, batch);
  }

  async appendMessagesMany(batches: RoomBatch[]): Promise<number[]> {
    if (batches.length === 0) return [];
    return this.writer.run("appendMessagesMany", batches);
  }

  async listMessages(roomId: string, q: MessageQuery): Promise<Message[]> {
    const args: [string, number | null, number | null, number] = [roomId, q.beforeSeq ?? null, q.afterSeq ?? null, q.limit];
    if (q.oldest) return this.db.query<Message, typeof args>(`${MESSAGE_SELECT} order by seq limit ?4`).all(...args);
    return this.db.query<Message, typeof args>(`${MESSAGE_SELECT} order by seq desc limit ?4`).all(...args).reverse();
  }

  async messageSeq(roomId: string, messageId: string): Promise<number | null> {
    const row = this.db.query<{ seq: number }, [string, string]>("select seq from city_room_messages where id = ? and room_id = ?").get(messageId, roomId);
    return row?.seq ?? null;
  }

  async lastSeqs(roomIds: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (roomIds.length === 0) return out;
    const rows = this.db
      .query<{ id: string; last_seq: number }, [string]>("select id, last_seq from city_rooms where id in (select value from json_each(?))")
      .all(JSON.stringify(roomIds));
    for (const r of rows) out.set(r.id, r.last_seq);
    return out;
  }

  async listFeed(q: { before?: string; limit: number }): Promise<FeedEvent[]> {
    const rows = this.db
      .query<FeedRow, [string | null, number]>(
        `select * from city_feed_events where (?1 is null or id < ?1) order by id desc limit ?2`,
      )
      .all(q.before ?? null, q.limit);
    return rows.map((r) => ({ ...r, payload: JSON.parse(r.payload) as Record<string, unknown> }));
  }

  async listRoomMatrixMappings(): Promise<RoomMatrixMapping[]> {
    return this.db
      .query<RoomMatrixMapping, []>("select id, slug, matrix_room_id, matrix_room_alias from city_rooms order by slug")
      .all();
  }

  async updateRoom(id: string, patch: RoomPatch): Promise<Room | "not_found" | "matrix_room_taken"> {
    const row = await this.writer.run("updateRoom", id, patch);
    if (row === "matrix_room_taken") return row;
    return row ? toRoom(row as unknown as RoomRow) : "not_found";
  }

  async matrixSyncToken(account: string): Promise<string | null> {
    return this.db.query<{ next_batch: string }, [string]>("select next_batch from matrix_sync_state where account = ?").get(account)?.next_batch ?? null;
  }

  async saveMatrixSyncToken(account: string, nextBatch: string): Promise<void> {
    await this.writer.run("saveMatrixSyncToken", account, nextBatch, new Date().toISOString());
  }

  async messageCountsSince(since: string): Promise<Map<string, number>> {
    const rows = this.db
      .query<{ room_id: string; n: number }, [string]>("select room_id, count(*) as n from city_room_messages where created_at >= ? group by room_id")
      .all(since);
    return new Map(rows.map((r) => [r.room_id, r.n]));
  }

  appendLivingMapEvents(events: LivingMapEventWrite[]): Promise<number> {
    if (events.length === 0) return Promise.resolve(0);
    return this.writer.run("appendLivingMapEvents", events.map(livingMapRow));
  }

  async listLivingMapHistory(q: { since?: string; beforeSeq?: number; limit: number }): Promise<LivingMapEvent[]> {
    return this.db
      .query<LivingMapRow, [string | null, number | null, number]>(
        `${LIVING_MAP_SELECT} where (?1 is null or timestamp >= ?1) and (?2 is null or seq < ?2) order by seq desc limit ?3`,
      )
      .all(q.since ?? null, q.beforeSeq ?? null, q.limit)
      .map(toLivingMapEvent);
  }

  async livingMapEventsAfter(afterSeq: number, limit: number): Promise<LivingMapEvent[]> {
    return this.db.query<LivingMapRow, [number, number]>(`${LIVING_MAP_SELECT} where seq > ? order by seq limit ?`).all(afterSeq, limit).map(toLivingMapEvent);
  }

  async livingMapEventSeq(id: string): Promise<number | null> {
    return this.db.query<{ seq: number }, [string]>("select seq from living_map_history where id = ?").get(id)?.seq ?? null;
  }

  async livingMapLastSeq(): Promise<{ seq: number; streamSeq: number | null }> {
    const r = this.db.query<{ seq: number | null; s: number | null }, []>("select max(seq) as seq, max(stream_seq) as s from living_map_history").get()!;
    return { seq: r.seq ?? 0, streamSeq: r.s };
  }

  async saveLivingMapSnapshot(s: LivingMapSnapshotRow): Promise<void> {
    await this.writer.run("saveLivingMapSnapshot", s);
  }

  async latestLivingMapSnapshot(): Promise<LivingMapSnapshotRow | null> {
    const r = this.db
      .query<{ created_at: string; last_event_seq: number; last_stream_seq: number | null; scene: string }, []>(
        "select created_at, last_event_seq, last_stream_seq, scene from living_map_snapshots order by id desc limit 1",
      )
      .get();
    return r ? { createdAt: r.created_at, lastEventSeq: r.last_event_seq, lastStreamSeq: r.last_stream_seq, scene: JSON.parse(r.scene) } : null;
  }

  pruneLivingMap(olderThan: string, limit: number): Promise<number> {
    return this.writer.run("pruneLivingMap", olderThan, limit);
  }

  secondmeSession(userId: string, fresh: { id: string; created_at: string }): Promise<string> {
    return this.writer.run("secondmeSession", userId, fresh);
  }

  async appendSecondmeMessage(m: SecondmeMessage): Promise<void> {
    await this.writer.run("appendSecondmeMessage", m);
  }

  async setSecondmeStatus(messageId: string, status: SecondmeStatus, error: string | null): Promise<void> {
    await this.writer.run("setSecondmeStatus", messageId, status, error);
  }

  async listSecondmeMessages(userId: string, limit: number): Promise<SecondmeMessage[]> {
    return this.db
      .query<SecondmeMessage, [string, number]>("select * from secondme_messages where user_id = ? order by id desc limit ?")
      .all(userId, limit)
      .reverse();
  }

  async secondmeStats(userId: string): Promise<SecondmeStats> {
    const row = this.db
      .query<SecondmeStats, [string, string]>(
        `select (select count(*) from secondme_sessions where user_id = ?1) as sessions, count(*) as messages,
                coalesce(sum(tokens_used), 0) as total_tokens,
                avg(case when role = 'assistant' then latency_ms end) as avg_latency_ms,
                max(created_at) as last_interaction
         from secondme_messages where user_id = ?2`,
      )
      .get(userId, userId)!;
    return { ...row, avg_latency_ms: row.avg_latency_ms === null ? null : Math.round(row.avg_latency_ms) };
  }

  clearSecondme(userId: string): Promise<number> {
    return this.writer.run("clearSecondme", userId);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.writer.close();
    this.db.close();
  }
}

/** Runs a write by name, on the writer thread or inline. */
interface Writer {
  readonly mode: "inline" | "thread";
  run<K extends SqliteWriteOp>(op: K, ...args: Parameters<SqliteWrites[K]>): Promise<ReturnType<SqliteWrites[K]>>;
  close(): Promise<void>;
}

/** Writes on this thread, each done by the time `run` returns (its promise is already settled). */
function inline(writes: SqliteWrites): Writer {
  return {
    mode: "inline",
    run: async (op, ...args) => (writes[op] as (...a: unknown[]) => never)(...args),
    close: async () => {},
  };
}

/**
 * Writes inline until they are slow ({@link SLOW_WRITES_TO_MOVE} in a row over `maxMs`, or one
 * over ten times it), then on a writer thread for good. The move keeps the order of writes: an
 * inline write is done when `run` returns, so nothing is in flight when the next one goes to the
 * thread. The limit is wall time, so writes the OS preempted count too: the safe way round (the
 * thread is what every store had before).
 */
class AdaptiveWriter implements Writer {
  private thread: WriterThread | null = null;
  private slowInARow = 0;

  constructor(
    /** Runs each write before it returns (see {@link inline}), which is what lets `run` time it. */
    private readonly inline: Writer,
    private readonly startThread: () => WriterThread,
    private readonly maxMs: number,
    private readonly timeMs: () => number,
    private readonly onMoved?: (why: string) => void,
  ) {}

  get mode(): "inline" | "thread" {
    return this.thread ? "thread" : "inline";
  }

  run<K extends SqliteWriteOp>(op: K, ...args: Parameters<SqliteWrites[K]>): Promise<ReturnType<SqliteWrites[K]>> {
    if (this.thread) return this.thread.run(op, ...args);
    const started = this.timeMs();
    const done = this.inline.run(op, ...args);
    this.judge(op, this.timeMs() - started);
    return done;
  }

  private judge(op: string, ms: number): void {
    this.slowInARow = ms > this.maxMs ? this.slowInARow + 1 : 0;
    if (this.slowInARow < SLOW_WRITES_TO_MOVE && ms <= this.maxMs * 10) return;
    this.thread = this.startThread();
    const what = ms > this.maxMs * 10 ? `an inline ${op} took ${ms.toFixed(1)} ms (over ${this.maxMs * 10} ms)` : `${this.slowInARow} inline writes in a row took over ${this.maxMs} ms (the last, ${op}, ${ms.toFixed(1)} ms)`;
    this.onMoved?.(`${what}: writes go to the writer thread from now on`);
  }

  async close(): Promise<void> {
    await this.thread?.close();
  }
}

/**
 * Times 8 fsyncs of a small file in `dir` (the database's directory).
 * @returns true when their median is at most `fastMs`; false when the probe cannot be written
 */
function fsyncIsFast(dir: string, fastMs: number): boolean {
  const probe = path.join(dir, `.fsync-probe-${process.pid}`);
  let fd: number;
  try {
    fd = openSync(probe, "w");
  } catch {
    return false; // cannot even write a probe (a full or read-only disk): the thread, which reports it
  }
  try {
    const block = Buffer.alloc(4096, 1);
    const times: number[] = [];
    for (let i = 0; i < 8; i++) {
      writeSync(fd, block, 0, block.length, 0);
      const t0 = performance.now();
      fdatasyncSync(fd);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    return times[4]! <= fastMs;
  } catch {
    return false;
  } finally {
    closeSync(fd);
    rmSync(probe, { force: true });
  }
}

/** The writer thread's entry (an entry point of `bun run build`). */
const WORKER_SPECIFIER = workerEntry("storage/sqlite-writer.worker.ts");

/** The main thread's handle on the writer thread: one request, one reply, in order. */
class WriterThread implements Writer {
  readonly mode = "thread" as const;
  private readonly worker: Worker;
  private readonly calls: WorkerCalls;

  constructor(file: string, synchronous: "FULL" | "NORMAL") {
    this.worker = new Worker(WORKER_SPECIFIER);
    this.calls = new WorkerCalls(this.worker, "sqlite: ");
    this.worker.onerror = (e) => this.calls.fail(new Error(`sqlite writer thread failed: ${e.message}`));
    this.worker.postMessage({ op: "open", file, synchronous });
  }

  /**
   * Sends `op` with its arguments as one JSON string: the structured clone of nested objects (a
   * batch of messages with their feed events) cost ~15 µs of the event loop per call, a string ~3.
   */
  run<K extends SqliteWriteOp>(op: K, ...args: Parameters<SqliteWrites[K]>): Promise<ReturnType<SqliteWrites[K]>> {
    return this.calls.send<ReturnType<SqliteWrites[K]>>({ op, json: JSON.stringify(args) }).answer;
  }

  async close(): Promise<void> {
    if (this.calls.alive) await this.calls.send({ op: "close" }).answer.catch(() => {});
    this.worker.terminate();
    this.calls.fail(new Error("sqlite: store closed"));
  }
}

function toRoom(r: RoomRow): Room {
  return {
    id: r.id,
    slug: r.slug,
    name: r.name,
    description: r.description,
    is_default: r.is_default === 1,
    created_at: r.created_at,
    created_by: r.created_by,
    matrix_room_id: r.matrix_room_id,
    matrix_room_alias: r.matrix_room_alias,
  };
}
