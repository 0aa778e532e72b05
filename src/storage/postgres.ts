/**
 * PostgresStore: the production store (SPEC "Engines"), PostgreSQL through postgres.js. Several
 * instances may share one database: migrations take a transaction-scoped advisory lock, and every
 * write is one statement (atomic, one round trip).
 */
import postgres, { type Sql } from "postgres";
import { checksum, POSTGRES_MIGRATIONS, type Migration } from "./migrations.ts";
import type {
  FeedEvent, Message, MessageQuery, MessageWrite, Room, RoomMatrixMapping, RoomSummary, SecondmeMessage, SecondmeStats, SecondmeStatus, Store,
} from "./store.ts";

export interface PostgresStoreOptions {
  url: string;
  /** Connections in the pool. */
  poolMax?: number;
  migrations?: Migration[];
}

type Ts = Date | string;
const iso = (v: Ts): string => (v instanceof Date ? v.toISOString() : new Date(v).toISOString());
const isoOrNull = (v: Ts | null): string | null => (v === null ? null : iso(v));

export class PostgresStore implements Store {
  readonly engine = "postgres" as const;
  private readonly sql: Sql;
  private readonly migrations: Migration[];
  private closed = false;

  constructor(opts: PostgresStoreOptions) {
    this.sql = postgres(opts.url, {
      max: opts.poolMax ?? 10,
      onnotice: () => {},
      connect_timeout: 10,
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

  async createRoom(room: Room, seed: { messages: Message[]; events: FeedEvent[] }): Promise<boolean> {
    return this.sql.begin(async (tx) => {
      const inserted = await tx`
        insert into city_rooms (id, slug, name, description, is_default, created_at, created_by, matrix_room_id, matrix_room_alias)
        values (${room.id}, ${room.slug}, ${room.name}, ${room.description}, ${room.is_default}, ${room.created_at},
                ${room.created_by}, ${room.matrix_room_id}, ${room.matrix_room_alias})
        on conflict do nothing returning id`;
      if (inserted.length === 0) return false;
      if (seed.messages.length > 0 || seed.events.length > 0) await insertRows(tx, seed.messages, seed.events);
      return true;
    });
  }

  async appendMessages(batch: MessageWrite[]): Promise<void> {
    if (batch.length === 0) return;
    await insertRows(this.sql, batch.map((w) => w.message), batch.map((w) => w.event));
  }

  async listMessages(roomId: string, q: MessageQuery): Promise<Message[]> {
    const before = q.before ?? null;
    const after = q.after ?? null;
    const rows = await this.sql<(Omit<Message, "created_at"> & { created_at: Ts })[]>`
      select id, room_id, author_user_id, author_agent_id, body, created_at from city_room_messages
      where room_id = ${roomId} and (${before}::text is null or id < ${before}) and (${after}::text is null or id > ${after})
      order by id desc limit ${q.limit}`;
    return rows.reverse().map((r) => ({ ...r, created_at: iso(r.created_at) }));
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

/**
 * Inserts messages and feed events in one statement. The text never changes with the batch size
 * (arrays through `unnest`), so the server plans it once per connection.
 */
async function insertRows(sql: Sql | postgres.TransactionSql, messages: Message[], events: FeedEvent[]): Promise<void> {
  await sql`
    with m as (
      insert into city_room_messages (id, room_id, author_user_id, author_agent_id, body, created_at)
      select * from unnest(
        ${messages.map((m) => m.id)}::text[], ${messages.map((m) => m.room_id)}::text[],
        ${messages.map((m) => m.author_user_id)}::text[], ${messages.map((m) => m.author_agent_id)}::text[],
        ${messages.map((m) => m.body)}::text[], ${messages.map((m) => m.created_at)}::timestamptz[])
    )
    insert into city_feed_events (id, kind, room_id, user_id, agent_id, payload, created_at)
    select * from unnest(
      ${events.map((e) => e.id)}::text[], ${events.map((e) => e.kind)}::text[], ${events.map((e) => e.room_id)}::text[],
      ${events.map((e) => e.user_id)}::text[], ${events.map((e) => e.agent_id)}::text[],
      ${events.map((e) => JSON.stringify(e.payload))}::text[]::jsonb[], ${events.map((e) => e.created_at)}::timestamptz[])`;
}
