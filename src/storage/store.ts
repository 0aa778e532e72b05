/**
 * Store: the small query surface the city needs (seed 000 §2 tables), with two implementations
 * that pass one contract suite (`test/contract/store.contract.ts`):
 * - {@link PostgresStore} (`postgres.ts`) when DATABASE_URL is set: production, several instances;
 * - {@link SqliteStore} (`sqlite.ts`) otherwise: the embedded default, single machine, WAL mode.
 *
 * All timestamps cross this interface as ISO-8601 UTC strings with milliseconds
 * (`2025-11-23T10:15:00.000Z`). Ids are made by the caller (prefixed ULIDs, `src/ids.ts`), so a
 * row's id and its `created_at` tell the same time and ids sort as rows were created.
 */

/** A city room (seed 000 §2.1, plus the Matrix mapping of seed 003 §3.2). */
export interface Room {
  id: string;
  slug: string;
  name: string;
  description: string | null;
  is_default: boolean;
  created_at: string;
  created_by: string | null;
  matrix_room_id: string | null;
  matrix_room_alias: string | null;
}

/** A room as listed: plus the time of its latest message (`null` while it has none). */
export interface RoomSummary extends Room {
  last_event: string | null;
}

/**
 * A room message (seed 000 §2.2). Exactly one of the two authors is set for a user or agent.
 * `seq` is the message's number in its room (1, 2, 3, … with no gaps), assigned by the store in
 * the transaction that writes it (SPEC "HTTP API"): it orders a room on every instance.
 */
export interface Message {
  id: string;
  room_id: string;
  seq: number;
  author_user_id: string | null;
  author_agent_id: string | null;
  body: string;
  created_at: string;
}

export type FeedKind = "room_message" | "agent_reply" | "system";

/** A city feed event (seed 000 §2.3). */
export interface FeedEvent {
  id: string;
  kind: FeedKind;
  room_id: string | null;
  user_id: string | null;
  agent_id: string | null;
  payload: Record<string, unknown>;
  created_at: string;
}

/** Fields of a room an admin may change (SPEC `PATCH /city/rooms/{room_id}`). */
export interface RoomPatch {
  name?: string;
  description?: string | null;
  matrix_room_id?: string | null;
  matrix_room_alias?: string | null;
}

/** What the presence aggregator needs to map Matrix rooms to city rooms (seed 003 §3.2). */
export interface RoomMatrixMapping {
  id: string;
  slug: string;
  matrix_room_id: string | null;
  matrix_room_alias: string | null;
}

/** A message before the store numbered it. */
export type NewMessage = Omit<Message, "seq">;

/** A message and the `room_message` feed event that records it; written together or not at all. */
export interface MessageWrite {
  message: NewMessage;
  event: FeedEvent;
}

/** One room's messages in a multi-room append ({@link Store.appendMessagesMany}). */
export interface RoomBatch {
  roomId: string;
  batch: MessageWrite[];
}

export type SecondmeRole = "user" | "assistant";
/** `pending` while the agent works, `answered` or `unanswered` after; assistant messages are `answered`. */
export type SecondmeStatus = "pending" | "answered" | "unanswered";

/** A Second Me message (seed 000 §2.4, with seed 001's tokens and latency). */
export interface SecondmeMessage {
  id: string;
  session_id: string;
  user_id: string;
  role: SecondmeRole;
  content: string;
  tokens_used: number | null;
  latency_ms: number | null;
  status: SecondmeStatus;
  /** Why a prompt went unanswered (an error code), else null. */
  error: string | null;
  created_at: string;
}

/** A user's Second Me numbers (seed 001 `get_user_stats`). */
export interface SecondmeStats {
  sessions: number;
  messages: number;
  total_tokens: number;
  /** Mean agent latency over answered prompts, ms; null before the first answer. */
  avg_latency_ms: number | null;
  last_interaction: string | null;
}

/** Which messages of a room to read. Results are always in seq order (oldest first). */
export interface MessageQuery {
  /** Only messages with a seq lower than this (paging back in history). */
  beforeSeq?: number;
  /** Only messages with a seq higher than this (recovery, gap filling). */
  afterSeq?: number;
  /**
   * At most this many: the newest ones when more match, or with `oldest` the oldest ones (a gap
   * filler reads forward from `afterSeq` in pages).
   */
  limit: number;
  oldest?: boolean;
}

/** Where a living-map event came from: the JetStream durable consumer, core NATS, or this process. */
export type LivingMapSource = "jetstream" | "nats" | "local";

/** One event of the living map's log (seed 004 §5, with seed 002's source and entity columns). */
export interface LivingMapEvent {
  /** A UUID (`evt-` free, as seed 004's `id UUID`). */
  id: string;
  /** Its place in the log (insertion order): the cursor of paging and stream replay. */
  seq: number;
  timestamp: string;
  /** The NATS subject it came on (e.g. `node.metrics.gpu-1`). */
  event_type: string;
  payload: Record<string, unknown>;
  source: LivingMapSource;
  entity_id: string | null;
  entity_type: string | null;
  /** Its JetStream sequence, when it came through the durable consumer. */
  stream_seq: number | null;
}

export type LivingMapEventWrite = Omit<LivingMapEvent, "seq"> & {
  /** `payload` as JSON text, when the writer already has it (as it came off NATS): saves serialising it again. */
  payloadJson?: string;
};

/** A saved picture of the living map's scene, to warm a starting instance. */
export interface LivingMapSnapshotRow {
  scene: unknown;
  /** The scene includes every logged event up to this seq … */
  lastEventSeq: number;
  /** … and, with JetStream, every stream message up to this sequence. */
  lastStreamSeq: number | null;
  createdAt: string;
}

export interface Store {
  /** Which engine this is, for `/readyz` and logs. */
  readonly engine: "postgres" | "sqlite";
  /**
   * Whether appends are applied in the order they are called even while several are in flight
   * (one writer, first in first out), so a room's next batch may be sent before the last is answered.
   */
  readonly appendsInOrder: boolean;
  /**
   * Whether an append commits synchronously on the calling thread, blocking the event loop for
   * the commit and its fsync (SQLite's inline writer; PostgreSQL's commit thread, which the loop
   * waits for at most 10 ms); may change while the store runs (an `auto` SQLite store moves to its
   * writer thread, a PostgreSQL store whose commit thread failed goes back to its pool). The
   * message writer then gathers one loop turn's messages into each commit.
   */
  readonly commitsOnCaller: boolean;

  /** Applies pending migrations; safe to call twice and from two processes at once. Returns the versions it applied. */
  migrate(): Promise<string[]>;

  /** Cheap round trip; throws when the store is unreachable. */
  ping(): Promise<void>;

  /**
   * A tiny durable write (one row of `city_health`), for readiness: throws when the store cannot
   * write (unreachable, read-only, disk full) even though it still answers reads.
   */
  probeWrite(): Promise<void>;

  /** Rooms ordered by creation (then id), with `last_event`. */
  listRooms(page: { limit: number; offset: number }): Promise<RoomSummary[]>;

  getRoom(id: string): Promise<Room | null>;

  /**
   * Inserts `room` and, in the same transaction, the `seed` messages (numbered 1, 2, … in array
   * order) and events.
   * @returns `false` (and writes nothing) when a room with that id or slug already exists.
   */
  createRoom(room: Room, seed: { messages: NewMessage[]; events: FeedEvent[] }): Promise<boolean>;

  /**
   * Durably appends messages of one room and their feed events in one transaction, numbering
   * them in array order after the room's last seq. Across every writer on the store, a message
   * with seq n commits only after every message of its room below n has committed, so a reader
   * that sees seq n can read every seq below it.
   * @returns the seq of the first message (the others follow one by one); resolves only after the commit
   * @throws Error when the room does not exist or the store fails; nothing of the batch was written
   */
  appendMessages(roomId: string, batch: MessageWrite[]): Promise<number>;

  /**
   * {@link appendMessages} for several rooms in one transaction: one commit (one fsync) for all,
   * all or nothing. Each room's batch is numbered as appendMessages numbers it; a room may appear
   * more than once, and its batches are numbered in array order.
   * @returns each batch's first seq, in the order given; resolves only after the commit
   * @throws Error as appendMessages when any batch fails; nothing of any batch was written then
   */
  appendMessagesMany(batches: RoomBatch[]): Promise<number[]>;

  /** Messages of one room selected by `query`, in seq order. */
  listMessages(roomId: string, query: MessageQuery): Promise<Message[]>;

  /** The seq of message `messageId` in `roomId`; `null` when the room has no such message. */
  messageSeq(roomId: string, messageId: string): Promise<number | null>;

  /**
   * The last seq of each room asked for (0 for a room without messages); unknown rooms are left
   * out. One round trip however many rooms (the positioning check of SPEC "Realtime guarantees").
   */
  lastSeqs(roomIds: string[]): Promise<Map<string, number>>;

  /** Feed events newest-first, optionally older than the `before` event id. */
  listFeed(query: { before?: string; limit: number }): Promise<FeedEvent[]>;

  /** Every room's Matrix mapping, ordered by slug (seed 003 `GET /internal/city/rooms`). */
  listRoomMatrixMappings(): Promise<RoomMatrixMapping[]>;

  /**
   * Changes the given fields of a room (SPEC `PATCH /city/rooms/{room_id}`); absent fields keep
   * their value, `null` clears a nullable one.
   * @returns the room as stored after the change; `not_found` for an unknown room;
   *   `matrix_room_taken` when another room already maps to that `matrix_room_id` (nothing changed)
   */
  updateRoom(id: string, patch: RoomPatch): Promise<Room | "not_found" | "matrix_room_taken">;

  /** The Matrix sync loop's saved `next_batch` for `account` (the bot's user id), or `null`. */
  matrixSyncToken(account: string): Promise<string | null>;

  /** Saves the sync loop's `next_batch` for `account` (seed 003 §2.2; MATRIX.md "save before processing"). */
  saveMatrixSyncToken(account: string, nextBatch: string): Promise<void>;

  /** Messages per room written at or after `since` (ISO time); rooms without any are left out. */
  messageCountsSince(since: string): Promise<Map<string, number>>;

  // ---- Living Map (seed 004 §5) ----

  /**
   * Appends events to the log in one transaction, in array order; an event whose id (or JetStream
   * sequence) is already there is skipped, so storing a batch twice is harmless.
   * @returns how many were new
   */
  appendLivingMapEvents(events: LivingMapEventWrite[]): Promise<number>;

  /** The log newest first: with `since` (ISO) only events at or after it, with `beforeSeq` only older ones. */
  listLivingMapHistory(q: { since?: string; beforeSeq?: number; limit: number }): Promise<LivingMapEvent[]>;

  /** Events logged after `afterSeq`, oldest first (stream replay, warming the scene). */
  livingMapEventsAfter(afterSeq: number, limit: number): Promise<LivingMapEvent[]>;

  /** The seq of event `id`; `null` when the log has no such event. */
  livingMapEventSeq(id: string): Promise<number | null>;

  /** The highest seq and JetStream sequence in the log (0 and null while it is empty). */
  livingMapLastSeq(): Promise<{ seq: number; streamSeq: number | null }>;

  saveLivingMapSnapshot(s: LivingMapSnapshotRow): Promise<void>;

  /** The newest saved snapshot, or `null`. */
  latestLivingMapSnapshot(): Promise<LivingMapSnapshotRow | null>;

  /**
   * Deletes up to `limit` events older than `olderThan` (ISO), and snapshots older than it but the
   * newest one (retention).
   * @returns events deleted
   */
  pruneLivingMap(olderThan: string, limit: number): Promise<number>;

  // ---- Second Me (seed 001 repository) ----

  /**
   * The user's active session: the latest one, or `fresh` created now when there is none.
   * @returns the session id
   */
  secondmeSession(userId: string, fresh: { id: string; created_at: string }): Promise<string>;

  /** Appends a message to its session. */
  appendSecondmeMessage(m: SecondmeMessage): Promise<void>;

  /** Marks a prompt answered or unanswered (with the error code). */
  setSecondmeStatus(messageId: string, status: SecondmeStatus, error: string | null): Promise<void>;

  /** The user's latest `limit` messages, oldest-first. */
  listSecondmeMessages(userId: string, limit: number): Promise<SecondmeMessage[]>;

  secondmeStats(userId: string): Promise<SecondmeStats>;

  /** Deletes the user's sessions and messages. @returns messages deleted */
  clearSecondme(userId: string): Promise<number>;

  /** Releases connections / the file handle. Idempotent. */
  close(): Promise<void>;
}
