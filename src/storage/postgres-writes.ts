/**
 * The PostgreSQL message appends and connection options, shared by `PostgresStore` (its pool) and
 * its commit thread (`postgres-committer.worker.ts`): one room's batch as one statement, several
 * rooms' batches as one transaction.
 */
import type { Options, Sql, TransactionSql } from "postgres";
import type { MessageWrite, RoomBatch } from "./store.ts";

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

/**
 * The options of every connection pool of the store: `max` connections, quiet notices, a 5 s
 * connect timeout, {@link reconnectDelaySeconds}, and `application_name` (what
 * `pg_stat_activity` shows) "daarion-city", or "daarion-city commit thread" for the commit thread's.
 */
export function connectionOptions(max: number, role: "pool" | "commit thread" = "pool"): Options<{}> {
  const application_name = role === "pool" ? "daarion-city" : "daarion-city commit thread";
  return { max, onnotice: () => {}, connect_timeout: 5, backoff: reconnectDelaySeconds, connection: { application_name } };
}

/** @throws Error when the batch is empty or holds another room's message */
export function checkBatch(roomId: string, batch: MessageWrite[]): void {
  if (batch.length === 0) throw new Error("postgres: appendMessages needs at least one message");
  for (const w of batch) if (w.message.room_id !== roomId) throw new Error(`postgres: message ${w.message.id} is not in room ${roomId}`);
}

/**
 * Several rooms' batches in one transaction. Each room's statement takes that room's row lock
 * until the one commit; the rooms are locked in id order (a stable sort keeps a room's batches in
 * array order), so two calls at once, from any instances, cannot deadlock. postgres.js pipelines
 * the statements of an array returned to `begin`: BEGIN, them and COMMIT go in one flight.
 * @returns each batch's first seq, in the order of `batches`
 * @throws Error as {@link appendBatch}; then nothing is written
 */
export async function appendMany(sql: Sql, batches: RoomBatch[]): Promise<number[]> {
  if (batches.length === 0) return [];
  if (batches.length === 1) return [await appendBatch(sql, batches[0]!.roomId, batches[0]!.batch)];
  const order = batches.map((_, i) => i).sort((a, b) => (batches[a]!.roomId < batches[b]!.roomId ? -1 : batches[a]!.roomId > batches[b]!.roomId ? 1 : a - b));
  const firsts = await sql.begin((tx) => order.map((i) => appendBatch(tx, batches[i]!.roomId, batches[i]!.batch)));
  const out = new Array<number>(batches.length);
  order.forEach((i, k) => (out[i] = firsts[k]!));
  return out;
}

/**
 * One room's append as one statement (atomic, one round trip): the update takes the room's row
 * lock (a concurrent writer on another instance waits for our commit) and numbers the batch.
 * @returns the first seq @throws Error when the batch is empty, holds another room's message, or the room does not exist
 */
export async function appendBatch(sql: Sql | TransactionSql, roomId: string, batch: MessageWrite[]): Promise<number> {
  checkBatch(roomId, batch);
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


/**
 * The layout of the SharedArrayBuffer through which the commit thread answers a caller blocked in
 * `Atomics.wait`: `controlInts` Int32 slots (`done`: the id of the last request answered, `status`:
 * `ok` when the first seqs of that request follow, `byMessage` when only its message tells: an
 * error, or more than `maxRooms` rooms), then `maxRooms` Float64 first seqs.
 */
export const COMMIT_SLOT = { controlInts: 2, done: 0, status: 1, ok: 1, byMessage: 2, maxRooms: 512 } as const;

/** Bytes of the commit thread's SharedArrayBuffer. */
export const COMMIT_SLOT_BYTES = COMMIT_SLOT.controlInts * 4 + COMMIT_SLOT.maxRooms * 8;
