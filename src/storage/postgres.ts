/**
 * PostgresStore: the production store (SPEC "Engines"), PostgreSQL through postgres.js. Several
 * instances may share one database: migrations take a transaction-scoped advisory lock, and every
 * write is one statement (atomic, one round trip), but `appendMessagesMany`: one transaction of one
 * statement per room, pipelined.
 */
import postgres, { type Sql, type TransactionSql } from "postgres";
import { checksum, POSTGRES_MIGRATIONS, type Migration } from "./migrations.ts";
import type {
  FeedEvent, LivingMapEvent, LivingMapEventWrite, LivingMapSnapshotRow, Message, MessageQuery, MessageWrite, NewMessage, Room, RoomBatch, RoomMatrixMapping, RoomPatch, RoomSummary, SecondmeMessage, SecondmeStats, SecondmeStatus, Store,
} from "./store.ts";

export interface PostgresStoreOptions {
  url: string;
  /** Connections in the pool. */
  poolMax?: number;
  migrations?: Migration[];
}

/**
 * Seconds to wait before a pooled connection tries again after the server refused or dropped it
 * (`attempt`: failed connects in a row across the pool): 50 ms doubling to at most 1 s, with
 * jitter. postgres.js's own schedule (3^attempt / 100 s, up to 20 s) climbs past 5 s after a few
 * seconds of outage with traffic, so a query sent just after the server came back waited up to
 * 20 s, where the spec has the city whole again within 5 s. Ten connections retrying once a
 * second is no load on a server coming up.
 */
function reconnectDelaySeconds(attempt: number): number {
  return Math.min(0.05 * 2 ** attempt, 1) * (0.5 + Math.random() / 2);
}

type Ts = Date | string;
const iso = (v: Ts): string => (v instanceof Date ? v.toISOString() : new Date(v).toISOString());
const isoOrNull = (v: Ts | null): string | null => (v === null ? null : iso(v));

export class PostgresStore implements Store {
  readonly engine = "postgres" as const;
  /** Two appends in flight run on two pooled connections and may take the room's lock in either order. */
  readonly appendsInOrder = false;
  /** Commits run on the PostgreSQL server; the loop only waits for the answer. */
  readonly commitsOnCaller = false;
  private readonly sql: Sql;
  private readonly migrations: Migration[];
  private closed = false;

  constructor(opts: PostgresStoreOptions) {
    this.sql = postgres(opts.url, {
      max: opts.poolMax ?? 10,
      onnotice: () => {},
      connect_timeout: 5,
      backoff: reconnectDelaySeconds,
      connection: { application_name: "daarion-city" },
    });
    this.migrations = opts.migrations ?? POSTGRES_MIGRATIONS;
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
    return appendBatch(this.sql, roomId, batch);
  }

  async appendMessagesMany(batches: RoomBatch[]): Promise<number[]> {
    if (batches.length === 0) return [];
    // One transaction: each room's statement takes that room's row lock until the one commit. The
    // rooms are locked in id order (a stable sort keeps a room's batches in array order), so two
    // calls at once, from any instances, cannot deadlock. postgres.js pipelines the statements of
    // an array returned to begin: BEGIN, them and COMMIT go in one flight.
    const order = batches.map((_, i) => i).sort((a, b) => (batches[a]!.roomId < batches[b]!.roomId ? -1 : batches[a]!.roomId > batches[b]!.roomId ? 1 : a - b));
    const firsts = await this.sql.begin((tx) => order.map((i) => appendBatch(tx, batches[i]!.roomId, batches[i]!.batch)));
    const out = new Array<number>(batches.length);
    order.forEach((i, k) => (out[i] = firsts[k]!));
    return out;
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
    await this.sql.end({ timeout: 5 });
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

/**
 * One room's append as one statement (atomic, one round trip): the update takes the room's row
 * lock (a concurrent writer on another instance waits for our commit) and numbers the batch.
 * @returns the first seq @throws Error when the batch is empty, holds another room's message, or the room does not exist
 */
async function appendBatch(sql: Sql | TransactionSql, roomId: string, batch: MessageWrite[]): Promise<number> {
  if (batch.length === 0) throw new Error("postgres: appendMessages needs at least one message");
  for (const w of batch) if (w.message.room_id !== roomId) throw new Error(`postgres: message ${w.message.id} is not in room ${roomId}`);
  const messages = batch.map((w) => w.message);
  const events = batch.map((w) => w.event);
  const n = batch.length;
  const rows = await sql<{ first: string }[]>`
    with s as (
      update city_rooms set last_seq = last_seq + ${n} where id = ${roomId} returning last_seq - ${n} as base
    ), m as (
      insert into city_room_messages (id, room_id, seq, author_user_id, author_agent_id, body, created_at)
      select u.id, u.room_id, s.base + u.ord, u.author_user_id, u.author_agent_id, u.body, u.created_at
      from s, unnest(
        ${messages.map((m) => m.id)}::text[], ${messages.map((m) => m.room_id)}::text[],
        ${messages.map((m) => m.author_user_id)}::text[], ${messages.map((m) => m.author_agent_id)}::text[],
        ${messages.map((m) => m.body)}::text[], ${messages.map((m) => m.created_at)}::timestamptz[]
      ) with ordinality as u(id, room_id, author_user_id, author_agent_id, body, created_at, ord)
    ), e as (
      insert into city_feed_events (id, kind, room_id, user_id, agent_id, payload, created_at)
      select * from unnest(
        ${events.map((e) => e.id)}::text[], ${events.map((e) => e.kind)}::text[], ${events.map((e) => e.room_id)}::text[],
        ${events.map((e) => e.user_id)}::text[], ${events.map((e) => e.agent_id)}::text[],
        ${events.map((e) => JSON.stringify(e.payload))}::text[]::jsonb[], ${events.map((e) => e.created_at)}::timestamptz[])
      where exists (select 1 from s)
    )
    select (base + 1)::text as first from s`;
  if (rows.length === 0) throw new Error(`postgres: room ${roomId} does not exist`);
  return Number(rows[0]!.first);
}

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
