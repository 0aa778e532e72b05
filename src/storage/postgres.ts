/**
 * PostgresStore: the production store (SPEC "Engines"), PostgreSQL through postgres.js. Several
 * instances may share one database: migrations take a transaction-scoped advisory lock, and every
 * write is one statement (atomic, one round trip), but `appendMessagesMany`: one transaction of one
 * statement per room, pipelined. Message appends go to a commit thread whose answer the event loop
 * waits for, briefly (POSTGRES_COMMIT=caller, the default; see {@link CommitThread}), or through
 * the pool like the rest (`pool`).
 */
import postgres, { type Sql } from "postgres";
import { checksum, POSTGRES_MIGRATIONS, type Migration } from "./migrations.ts";
import { appendBatch, appendMany, checkBatch, COMMIT_SLOT, COMMIT_SLOT_BYTES, connectionOptions } from "./postgres-writes.ts";
import { WorkerCalls } from "../workers/calls.ts";
import { workerEntry } from "../workers/entry.ts";
import type {
  FeedEvent, LivingMapEvent, LivingMapEventWrite, LivingMapSnapshotRow, Message, MessageQuery, MessageWrite, NewMessage, Room, RoomBatch, RoomMatrixMapping, RoomPatch, RoomSummary, SecondmeMessage, SecondmeStats, SecondmeStatus, Store,
} from "./store.ts";

export interface PostgresStoreOptions {
  url: string;
  /** Connections in the pool. */
  poolMax?: number;
  migrations?: Migration[];
  /**
   * Where message appends commit (POSTGRES_COMMIT): `caller` (the default) sends them to the commit
   * thread and blocks the event loop until the commit is answered, at most `callerWaitMs`, so a
   * message is committed and published in the turn after the one that read it (see
   * {@link CommitThread}); `pool` sends them through the pool and reads the answer when the event
   * loop gets to it.
   */
  commit?: "pool" | "caller";
  /** `caller`: longest the event loop blocks for one commit, ms; a slower commit is read when it comes (default {@link CALLER_WAIT_MS}). */
  callerWaitMs?: number;
  /** `caller`: called when the commit thread fails, with why; appends go through the pool from then on. */
  onCommitThreadFailed?: (why: string) => void;
  /** `caller`: the commit thread's entry for `new Worker` (default: `postgres-committer.worker.ts`; tests give one that fails). */
  commitThreadEntry?: string;
}

type Ts = Date | string;
const iso = (v: Ts): string => (v instanceof Date ? v.toISOString() : new Date(v).toISOString());
const isoOrNull = (v: Ts | null): string | null => (v === null ? null : iso(v));

export class PostgresStore implements Store {
  readonly engine = "postgres" as const;
  /** Two appends in flight run on two pooled connections and may take the room's lock in either order. */
  readonly appendsInOrder = false;
  /** With `commit: "caller"` the loop blocks for each append's commit (see {@link Store.commitsOnCaller}), until the commit thread fails. */
  get commitsOnCaller(): boolean {
    return this.committer !== null && this.committer.alive;
  }
  private readonly sql: Sql;
  private readonly migrations: Migration[];
  private readonly committer: CommitThread | null;
  private closed = false;

  constructor(opts: PostgresStoreOptions) {
    this.sql = postgres(opts.url, connectionOptions(opts.poolMax ?? 10));
    this.migrations = opts.migrations ?? POSTGRES_MIGRATIONS;
    this.committer = (opts.commit ?? "caller") === "caller" ? new CommitThread(opts.url, opts.callerWaitMs ?? CALLER_WAIT_MS, opts.commitThreadEntry ?? COMMITTER_SPECIFIER, opts.onCommitThreadFailed) : null;
  }

  async migrate(): Promise<string[]> {
    const ordered = [...this.migrations].sort((a, b) => a.version.localeCompare(b.version));
    return this.sql.begin(async (tx) => {
      // One lock per schema: a second instance waits here, then finds every version recorded.
      await tx`select pg_advisory_xact_lock(hashtext('daarion-city:migrate:' || current_schema()))`;
      await tx`create table if not exists schema_migrations (version text primary key, checksum text not null, applied_at timestamptz not null default now())`;
      const applied = new Map((await tx<{ version: string; checksum: string }[]>`select version, checksum from schema_migrations`).map((r) => [r.version, r.checksum]));
      const done: string[] = [];
      for (const m of ordered) {
        const sum = checksum(m.sql);
        const prior = applied.get(m.version);
        if (prior !== undefined) {
          if (prior !== sum) throw new Error(`migrate: ${m.version} changed after it was applied (checksum ${prior} → ${sum})`);
          continue;
        }
        await tx.unsafe(m.sql);
        await tx`insert into schema_migrations (version, checksum) values (${m.version}, ${sum})`;
        done.push(m.version);
      }
      return done;
    });
  }

  async ping(): Promise<void> {
    await this.sql`select 1`;
  }

  async probeWrite(): Promise<void> {
    await this.sql`insert into city_health (id, probed_at) values (1, now()) on conflict (id) do update set probed_at = excluded.probed_at`;
  }

  async listRooms(page: { limit: number; offset: number }): Promise<RoomSummary[]> {
    const rows = await this.sql<(RoomRowPg & { last_event: Ts | null })[]>`
      select r.*, (select max(m.created_at) from city_room_messages m where m.room_id = r.id) as last_event
      from city_rooms r order by r.created_at, r.id limit ${page.limit} offset ${page.offset}`;
    return rows.map((r) => ({ ...toRoom(r), last_event: isoOrNull(r.last_event) }));
  }

  async getRoom(id: string): Promise<Room | null> {
    const [row] = await this.sql<RoomRowPg[]>`select * from city_rooms where id = ${id}`;
    return row ? toRoom(row) : null;
  }

  async createRoom(room: Room, seed: { messages: NewMessage[]; events: FeedEvent[] }): Promise<boolean> {
    return this.sql.begin(async (tx) => {
      const inserted = await tx`
        insert into city_rooms (id, slug, name, description, is_default, created_at, created_by, matrix_room_id, matrix_room_alias, last_seq)
        values (${room.id}, ${room.slug}, ${room.name}, ${room.description}, ${room.is_default}, ${room.created_at},
                ${room.created_by}, ${room.matrix_room_id}, ${room.matrix_room_alias}, ${seed.messages.length})
        on conflict do nothing returning id`;
      if (inserted.length === 0) return false;
      if (seed.messages.length > 0) await insertMessages(tx, room.id, seed.messages, 0);
      if (seed.events.length > 0) await insertEventsSql(tx, seed.events);
      return true;
    });
  }

  async appendMessages(roomId: string, batch: MessageWrite[]): Promise<number> {
    if (!this.commitsOnCaller) return appendBatch(this.sql, roomId, batch);
    return (await this.appendMessagesMany([{ roomId, batch }]))[0]!;
  }

  async appendMessagesMany(batches: RoomBatch[]): Promise<number[]> {
    // While the commit thread has an append out (slow, or waiting on another instance's row lock),
    // the next go through the pool rather than queue behind it on its one connection: a room never
    // has two batches out (the message writer settles one before it sends the next), and
    // transactions lock rooms in id order, so any two connections may commit side by side. A
    // commit thread that failed leaves every append to the pool.
    if (!this.committer?.alive || this.committer.busy) return appendMany(this.sql, batches);
    for (const { roomId, batch } of batches) checkBatch(roomId, batch); // refused here, before anything is sent
    return this.committer.append(batches);
  }

  async listMessages(roomId: string, q: MessageQuery): Promise<Message[]> {
    const before = q.beforeSeq ?? null;
    const after = q.afterSeq ?? null;
    const rows = q.oldest
      ? await this.sql<MessageRowPg[]>`
          select id, room_id, seq, author_user_id, author_agent_id, body, created_at from city_room_messages
          where room_id = ${roomId} and (${before}::bigint is null or seq < ${before}) and (${after}::bigint is null or seq > ${after})
          order by seq limit ${q.limit}`
      : (
          await this.sql<MessageRowPg[]>`
          select id, room_id, seq, author_user_id, author_agent_id, body, created_at from city_room_messages
          where room_id = ${roomId} and (${before}::bigint is null or seq < ${before}) and (${after}::bigint is null or seq > ${after})
          order by seq desc limit ${q.limit}`
        ).reverse();
    return rows.map(toMessage);
  }

  async messageSeq(roomId: string, messageId: string): Promise<number | null> {
    const [row] = await this.sql<{ seq: string }[]>`select seq::text from city_room_messages where id = ${messageId} and room_id = ${roomId}`;
    return row ? Number(row.seq) : null;
  }

  async lastSeqs(roomIds: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    if (roomIds.length === 0) return out;
    const rows = await this.sql<{ id: string; last_seq: string }[]>`select id, last_seq::text from city_rooms where id = any(${roomIds}::text[])`;
    for (const r of rows) out.set(r.id, Number(r.last_seq));
    return out;
  }

  async listFeed(q: { before?: string; limit: number }): Promise<FeedEvent[]> {
    const before = q.before ?? null;
    const rows = await this.sql<(Omit<FeedEvent, "created_at"> & { created_at: Ts })[]>`
      select * from city_feed_events where (${before}::text is null or id < ${before}) order by id desc limit ${q.limit}`;
    return rows.map((r) => ({ ...r, created_at: iso(r.created_at) }));
  }

  async listRoomMatrixMappings(): Promise<RoomMatrixMapping[]> {
    return [...(await this.sql<RoomMatrixMapping[]>`select id, slug, matrix_room_id, matrix_room_alias from city_rooms order by slug`)];
  }

  async updateRoom(id: string, patch: RoomPatch): Promise<Room | "not_found" | "matrix_room_taken"> {
    const cols = (["name", "description", "matrix_room_id", "matrix_room_alias"] as const).filter((c) => patch[c] !== undefined);
    try {
      const [row] =
        cols.length === 0
          ? await this.sql<RoomRowPg[]>`select * from city_rooms where id = ${id}`
          : await this.sql<RoomRowPg[]>`update city_rooms set ${this.sql(Object.fromEntries(cols.map((c) => [c, patch[c] ?? null])), ...cols)} where id = ${id} returning *`;
      return row ? toRoom(row) : "not_found";
    } catch (err) {
      if ((err as { code?: string }).code === "23505") return "matrix_room_taken";
      throw err;
    }
  }

  async matrixSyncToken(account: string): Promise<string | null> {
    const [row] = await this.sql<{ next_batch: string }[]>`select next_batch from matrix_sync_state where account = ${account}`;
    return row?.next_batch ?? null;
  }

  async saveMatrixSyncToken(account: string, nextBatch: string): Promise<void> {
    await this.sql`
      insert into matrix_sync_state (account, next_batch, updated_at) values (${account}, ${nextBatch}, now())
      on conflict (account) do update set next_batch = excluded.next_batch, updated_at = excluded.updated_at`;
  }

  async messageCountsSince(since: string): Promise<Map<string, number>> {
    const rows = await this.sql<{ room_id: string; n: string }[]>`
      select room_id, count(*)::text as n from city_room_messages where created_at >= ${since} group by room_id`;
    return new Map(rows.map((r) => [r.room_id, Number(r.n)]));
  }

  async appendLivingMapEvents(events: LivingMapEventWrite[]): Promise<number> {
    if (events.length === 0) return 0;
    // One JSON array, put together from text (payloads as they came off NATS): far cheaper than
    // eight escaped arrays. Rows keep the array's order, so seq follows it.
    let rows = "[";
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      // id (a UUID), timestamp (ISO), source and entity_type (fixed words) never need escaping
      rows += `${i ? "," : ""}{"id":"${e.id}","timestamp":"${e.timestamp}","event_type":${JSON.stringify(e.event_type)},"payload":${e.payloadJson ?? JSON.stringify(e.payload)},"source":"${e.source}","entity_id":${e.entity_id === null ? "null" : JSON.stringify(e.entity_id)},"entity_type":${e.entity_type === null ? "null" : `"${e.entity_type}"`},"stream_seq":${e.stream_seq ?? "null"}}`;
    }
    rows += "]";
    const res = await this.sql`
      insert into living_map_history (id, timestamp, event_type, payload, source, entity_id, entity_type, stream_seq)
      select id, timestamp, event_type, payload, source, entity_id, entity_type, stream_seq
      from rows from (jsonb_to_recordset(${rows}::text::jsonb)
        as (id uuid, timestamp timestamptz, event_type text, payload jsonb, source text, entity_id text, entity_type text, stream_seq bigint)) with ordinality
        as x(id, timestamp, event_type, payload, source, entity_id, entity_type, stream_seq, n)
      order by n
      on conflict do nothing`;
    return res.count;
  }

  async listLivingMapHistory(q: { since?: string; beforeSeq?: number; limit: number }): Promise<LivingMapEvent[]> {
    const since = q.since ?? null;
    const before = q.beforeSeq ?? null;
    const rows = await this.sql<LivingMapRowPg[]>`
      select id, seq, timestamp, event_type, payload, source, entity_id, entity_type, stream_seq from living_map_history
      where (${since}::timestamptz is null or timestamp >= ${since}) and (${before}::bigint is null or seq < ${before})
      order by seq desc limit ${q.limit}`;
    return rows.map(toLivingMapEvent);
  }

  async livingMapEventsAfter(afterSeq: number, limit: number): Promise<LivingMapEvent[]> {
    const rows = await this.sql<LivingMapRowPg[]>`
      select id, seq, timestamp, event_type, payload, source, entity_id, entity_type, stream_seq from living_map_history
      where seq > ${afterSeq} order by seq limit ${limit}`;
    return rows.map(toLivingMapEvent);
  }

  async livingMapEventSeq(id: string): Promise<number | null> {
    if (!UUID_RE.test(id)) return null;
    const [r] = await this.sql<{ seq: string }[]>`select seq::text from living_map_history where id = ${id}::uuid`;
    return r ? Number(r.seq) : null;
  }

  async livingMapLastSeq(): Promise<{ seq: number; streamSeq: number | null }> {
    const [r] = await this.sql<{ seq: string | null; s: string | null }[]>`select max(seq)::text as seq, max(stream_seq)::text as s from living_map_history`;
    return { seq: Number(r!.seq ?? 0), streamSeq: r!.s === null ? null : Number(r!.s) };
  }

  async saveLivingMapSnapshot(s: LivingMapSnapshotRow): Promise<void> {
    await this.sql`
      insert into living_map_snapshots (created_at, last_event_seq, last_stream_seq, scene)
      values (${s.createdAt}, ${s.lastEventSeq}, ${s.lastStreamSeq}, ${this.sql.json(s.scene as postgres.JSONValue)})`;
  }

  async latestLivingMapSnapshot(): Promise<LivingMapSnapshotRow | null> {
    const [r] = await this.sql<{ created_at: Ts; last_event_seq: string; last_stream_seq: string | null; scene: unknown }[]>`
      select created_at, last_event_seq::text, last_stream_seq::text, scene from living_map_snapshots order by id desc limit 1`;
    return r ? { createdAt: iso(r.created_at), lastEventSeq: Number(r.last_event_seq), lastStreamSeq: r.last_stream_seq === null ? null : Number(r.last_stream_seq), scene: r.scene } : null;
  }

  async pruneLivingMap(olderThan: string, limit: number): Promise<number> {
    return this.sql.begin(async (tx) => {
      const res = await tx`
        delete from living_map_history where seq in (select seq from living_map_history where timestamp < ${olderThan} order by seq limit ${limit})`;
      await tx`delete from living_map_snapshots where created_at < ${olderThan} and id < (select max(id) from living_map_snapshots)`;
      return res.count;
    });
  }

  async secondmeSession(userId: string, fresh: { id: string; created_at: string }): Promise<string> {
    const [row] = await this.sql<{ id: string }[]>`
      with existing as (select id from secondme_sessions where user_id = ${userId} order by id desc limit 1),
      created as (
        insert into secondme_sessions (id, user_id, created_at)
        select ${fresh.id}, ${userId}, ${fresh.created_at} where not exists (select 1 from existing)
        returning id
      )
      select id from existing union all select id from created`;
    return row!.id;
  }

  async appendSecondmeMessage(m: SecondmeMessage): Promise<void> {
    await this.sql`
      insert into secondme_messages (id, session_id, user_id, role, content, tokens_used, latency_ms, status, error, created_at)
      values (${m.id}, ${m.session_id}, ${m.user_id}, ${m.role}, ${m.content}, ${m.tokens_used}, ${m.latency_ms}, ${m.status}, ${m.error}, ${m.created_at})`;
  }

  async setSecondmeStatus(messageId: string, status: SecondmeStatus, error: string | null): Promise<void> {
    await this.sql`update secondme_messages set status = ${status}, error = ${error} where id = ${messageId}`;
  }

  async listSecondmeMessages(userId: string, limit: number): Promise<SecondmeMessage[]> {
    const rows = await this.sql<(Omit<SecondmeMessage, "created_at"> & { created_at: Ts })[]>`
      select id, session_id, user_id, role, content, tokens_used, latency_ms, status, error, created_at
      from secondme_messages where user_id = ${userId} order by id desc limit ${limit}`;
    return rows.reverse().map((r) => ({ ...r, created_at: iso(r.created_at) }));
  }

  async secondmeStats(userId: string): Promise<SecondmeStats> {
    const [row] = await this.sql<{ sessions: string; messages: string; total_tokens: string; avg_latency_ms: string | null; last_interaction: Ts | null }[]>`
      select (select count(*) from secondme_sessions where user_id = ${userId}) as sessions, count(*) as messages,
             coalesce(sum(tokens_used), 0) as total_tokens,
             avg(latency_ms) filter (where role = 'assistant') as avg_latency_ms,
             max(created_at) as last_interaction
      from secondme_messages where user_id = ${userId}`;
    return {
      sessions: Number(row!.sessions),
      messages: Number(row!.messages),
      total_tokens: Number(row!.total_tokens),
      avg_latency_ms: row!.avg_latency_ms === null ? null : Math.round(Number(row!.avg_latency_ms)),
      last_interaction: isoOrNull(row!.last_interaction),
    };
  }

  async clearSecondme(userId: string): Promise<number> {
    return this.sql.begin(async (tx) => {
      const deleted = await tx`delete from secondme_messages where user_id = ${userId}`;
      await tx`delete from secondme_sessions where user_id = ${userId}`;
      return deleted.count;
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([this.sql.end({ timeout: 5 }), this.committer?.close()]);
  }
}

/**
 * Longest the event loop blocks for one commit on the commit thread, ms. On the 2-core bench host
 * an unloaded commit took 1.2 ms p50 / 5.8 ms p99 (2026-12-03); a commit past this is read when
 * it comes, as on the pool.
 */
export const CALLER_WAIT_MS = 10;

const COMMITTER_SPECIFIER = workerEntry("storage/postgres-committer.worker.ts");

/**
 * The caller's side of the commit thread (`postgres-committer.worker.ts`). An append is posted to
 * the thread, and when nothing else is in flight there the event loop blocks in `Atomics.wait`
 * until the thread has the commit's answer (at most `waitMs`): the message is then published in
 * the turn that sent it, as on SQLite's inline writer, instead of a turn or two later, when the
 * event loop next gets to a socket's answer. A commit slower than `waitMs`, an error, and an
 * append sent while another is in flight (the store sends those through its pool instead) are
 * answered through the thread's message, when the loop gets to it, so the loop never blocks for
 * longer than `waitMs` per append, nor at all while one is out (while PostgreSQL is away, say).
 */
class CommitThread {
  private readonly worker: Worker;
  private readonly calls: WorkerCalls;
  private readonly control = new SharedArrayBuffer(COMMIT_SLOT_BYTES);
  private readonly ctrl = new Int32Array(this.control, 0, COMMIT_SLOT.controlInts);
  private readonly firsts = new Float64Array(this.control, COMMIT_SLOT.controlInts * 4, COMMIT_SLOT.maxRooms);

  /** False once the thread failed or was closed. */
  get alive(): boolean {
    return this.calls.alive;
  }

  /** True while an append sent to the thread is unanswered. */
  get busy(): boolean {
    return this.calls.busy;
  }

  constructor(url: string, private readonly waitMs: number, entry: string, onFailed?: (why: string) => void) {
    this.worker = new Worker(entry);
    this.calls = new WorkerCalls(this.worker);
    this.worker.onerror = (e) => {
      const err = new Error(`postgres commit thread failed: ${e.message}`);
      this.calls.fail(err);
      onFailed?.(`${err.message}; message appends go through the pool from now on`);
    };
    this.worker.postMessage({ op: "open", url, control: this.control });
  }

  /**
   * Commits several rooms' batches in one transaction on the thread.
   * @returns each batch's first seq (as `appendMessagesMany`)
   * @throws Error with PostgreSQL's `code` when the commit failed; nothing of it was written
   */
  append(batches: RoomBatch[]): Promise<number[]> {
    // Only a request with nothing before it can be waited for: `done` then moves from id - 1 to id.
    const alone = this.calls.alive && !this.calls.busy;
    const { id, answer } = this.calls.send<number[]>({ json: JSON.stringify(batches) });
    if (!alone || this.waitMs <= 0) return answer;
    const deadline = performance.now() + this.waitMs;
    for (let left = this.waitMs; Atomics.load(this.ctrl, COMMIT_SLOT.done) !== id && left > 0; left = deadline - performance.now()) {
      Atomics.wait(this.ctrl, COMMIT_SLOT.done, id - 1, left);
    }
    if (Atomics.load(this.ctrl, COMMIT_SLOT.done) === id && Atomics.load(this.ctrl, COMMIT_SLOT.status) === COMMIT_SLOT.ok) {
      this.calls.forget(id);
      return Promise.resolve(Array.from(this.firsts.subarray(0, batches.length)));
    }
    return answer;
  }

  async close(): Promise<void> {
    if (this.calls.alive) await this.calls.send({ op: "close" }).answer.catch(() => {});
    this.worker.terminate();
    this.calls.fail(new Error("postgres: store closed"));
  }
}

interface RoomRowPg extends Omit<Room, "created_at"> {
  created_at: Ts;
}

function toRoom(r: RoomRowPg): Room {
  return {
    id: r.id,
    slug: r.slug,
    name: r.name,
    description: r.description,
    is_default: r.is_default,
    created_at: iso(r.created_at),
    created_by: r.created_by,
    matrix_room_id: r.matrix_room_id,
    matrix_room_alias: r.matrix_room_alias,
  };
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface LivingMapRowPg extends Omit<LivingMapEvent, "timestamp" | "seq" | "stream_seq"> {
  seq: string | number;
  stream_seq: string | number | null;
  timestamp: Ts;
}

const toLivingMapEvent = (r: LivingMapRowPg): LivingMapEvent => ({
  id: r.id, seq: Number(r.seq), timestamp: iso(r.timestamp), event_type: r.event_type, payload: r.payload, source: r.source, entity_id: r.entity_id,
  entity_type: r.entity_type, stream_seq: r.stream_seq === null ? null : Number(r.stream_seq),
});

interface MessageRowPg extends Omit<Message, "created_at" | "seq"> {
  seq: string | number;
  created_at: Ts;
}

const toMessage = (r: MessageRowPg): Message => ({
  id: r.id, room_id: r.room_id, seq: Number(r.seq), author_user_id: r.author_user_id, author_agent_id: r.author_agent_id, body: r.body,
  created_at: iso(r.created_at),
});

/** Inserts messages numbered `afterSeq + 1`, `afterSeq + 2`, … in array order. */
async function insertMessages(sql: postgres.TransactionSql, roomId: string, messages: NewMessage[], afterSeq: number): Promise<void> {
  await sql`
    insert into city_room_messages (id, room_id, seq, author_user_id, author_agent_id, body, created_at)
    select u.id, ${roomId}, ${afterSeq} + u.ord, u.author_user_id, u.author_agent_id, u.body, u.created_at
    from unnest(
      ${messages.map((m) => m.id)}::text[], ${messages.map((m) => m.author_user_id)}::text[], ${messages.map((m) => m.author_agent_id)}::text[],
      ${messages.map((m) => m.body)}::text[], ${messages.map((m) => m.created_at)}::timestamptz[]
    ) with ordinality as u(id, author_user_id, author_agent_id, body, created_at, ord)`;
}

/** The insert of feed events (arrays through `unnest`, so the text never changes with the count). */
function insertEventsSql(sql: postgres.TransactionSql, events: FeedEvent[]) {
  return sql`
    insert into city_feed_events (id, kind, room_id, user_id, agent_id, payload, created_at)
    select * from unnest(
      ${events.map((e) => e.id)}::text[], ${events.map((e) => e.kind)}::text[], ${events.map((e) => e.room_id)}::text[],
      ${events.map((e) => e.user_id)}::text[], ${events.map((e) => e.agent_id)}::text[],
      ${events.map((e) => JSON.stringify(e.payload))}::text[]::jsonb[], ${events.map((e) => e.created_at)}::timestamptz[])`;
}
