/**
 * The SQLite write statements, shared by the writer thread (`sqlite-writer.worker.ts`) and the
 * inline mode of {@link SqliteStore} (`:memory:` databases, which a second thread cannot open).
 */
import type { Database } from "bun:sqlite";
import type { FeedEvent, LivingMapEventWrite, LivingMapSnapshotRow, MessageWrite, NewMessage, Room, RoomBatch, RoomPatch, SecondmeMessage, SecondmeStatus } from "./store.ts";

/** One living-map event as the values of its insert: id, timestamp, event_type, payload (JSON text), source, entity_id, entity_type, stream_seq. */
export type LivingMapRowValues = [string, string, string, string, string, string | null, string | null, number | null];

/** The insert values of `e` (its payload's JSON text as it came, when it has it). */
export function livingMapRow(e: LivingMapEventWrite): LivingMapRowValues {
  return [e.id, e.timestamp, e.event_type, e.payloadJson ?? JSON.stringify(e.payload), e.source, e.entity_id, e.entity_type, e.stream_seq];
}

/**
 * Opens the pragmas every connection to the city database uses. The busy timeout comes first:
 * the main connection and the writer thread's open the same file at once, and the second one's
 * `journal_mode` could meet the first one's lock (SQLITE_BUSY_RECOVERY on a new file, seen once in
 * ~400 test starts) and fail at once instead of waiting.
 */
export function configureConnection(db: Database, synchronous: "FULL" | "NORMAL"): void {
  db.exec("PRAGMA busy_timeout = 5000");
  db.exec("PRAGMA journal_mode = WAL");
  db.exec(`PRAGMA synchronous = ${synchronous}`);
  db.exec("PRAGMA foreign_keys = ON");
}

/** Every write of the embedded store; the writer thread runs them by name (`op`). */
export interface SqliteWrites {
  /** @returns the first seq of the batch @throws Error when the room does not exist */
  appendMessages(roomId: string, batch: MessageWrite[]): number;
  /** Several rooms' batches in one transaction. @returns each batch's first seq @throws Error as appendMessages; then nothing is written */
  appendMessagesMany(batches: RoomBatch[]): number[];
  createRoom(room: Room, seed: { messages: NewMessage[]; events: FeedEvent[] }): boolean;
  secondmeSession(userId: string, fresh: { id: string; created_at: string }): string;
  appendSecondmeMessage(m: SecondmeMessage): void;
  setSecondmeStatus(messageId: string, status: SecondmeStatus, error: string | null): void;
  clearSecondme(userId: string): number;
  /** Writes the health row (readiness: a full disk fails here). */
  probeWrite(at: string): void;
  /** Rows as {@link livingMapRow} makes them (flat, cheap to hand to the writer thread). @returns how many were new */
  appendLivingMapEvents(rows: LivingMapRowValues[]): number;
  saveLivingMapSnapshot(s: LivingMapSnapshotRow): void;
  /** @returns events deleted */
  pruneLivingMap(olderThan: string, limit: number): number;
  /** @returns the room row after the change, `null` for an unknown room, `matrix_room_taken` on a duplicate Matrix room id */
  updateRoom(id: string, patch: RoomPatch): Record<string, unknown> | null | "matrix_room_taken";
  saveMatrixSyncToken(account: string, nextBatch: string, at: string): void;
}

export type SqliteWriteOp = keyof SqliteWrites;

export function sqliteWrites(db: Database): SqliteWrites {
  const insertMessage = (m: NewMessage, seq: number) =>
    db
      .query("insert into city_room_messages (id, room_id, seq, author_user_id, author_agent_id, body, created_at) values (?, ?, ?, ?, ?, ?, ?)")
      .run(m.id, m.room_id, seq, m.author_user_id, m.author_agent_id, m.body, m.created_at);
  // Advancing the room's counter takes SQLite's write lock first, so numbering and insert are one step.
  const advance = (roomId: string, n: number) =>
    db.query<{ last_seq: number }, [number, string]>("update city_rooms set last_seq = last_seq + ? where id = ? returning last_seq").get(n, roomId);
  const insertEvent = (e: FeedEvent) =>
    db
      .query("insert into city_feed_events (id, kind, room_id, user_id, agent_id, payload, created_at) values (?, ?, ?, ?, ?, ?, ?)")
      .run(e.id, e.kind, e.room_id, e.user_id, e.agent_id, JSON.stringify(e.payload), e.created_at);

  const appendIn = (roomId: string, batch: MessageWrite[]) => {
    const row = advance(roomId, batch.length);
    if (!row) throw new Error(`sqlite: room ${roomId} does not exist`);
    const first = row.last_seq - batch.length + 1;
    batch.forEach(({ message, event }, i) => {
      if (message.room_id !== roomId) throw new Error(`sqlite: message ${message.id} is not in room ${roomId}`);
      insertMessage(message, first + i);
      insertEvent(event);
    });
    return first;
  };
  const append = db.transaction(appendIn);
  const appendMany = db.transaction((batches: RoomBatch[]) => batches.map((b) => appendIn(b.roomId, b.batch)));
  const create = db.transaction((room: Room, seed: { messages: NewMessage[]; events: FeedEvent[] }) => {
    const res = db
      .query(
        `insert into city_rooms (id, slug, name, description, is_default, created_at, created_by, matrix_room_id, matrix_room_alias, last_seq)
         values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing`,
      )
      .run(
        room.id, room.slug, room.name, room.description, room.is_default ? 1 : 0, room.created_at, room.created_by, room.matrix_room_id,
        room.matrix_room_alias, seed.messages.length,
      );
    if (res.changes === 0) return false;
    seed.messages.forEach((m, i) => insertMessage(m, i + 1));
    for (const e of seed.events) insertEvent(e);
    return true;
  });
  const session = db.transaction((userId: string, fresh: { id: string; created_at: string }) => {
    const row = db.query<{ id: string }, [string]>("select id from secondme_sessions where user_id = ? order by id desc limit 1").get(userId);
    if (row) return row.id;
    db.query("insert into secondme_sessions (id, user_id, created_at) values (?, ?, ?)").run(fresh.id, userId, fresh.created_at);
    return fresh.id;
  });
  const clear = db.transaction((userId: string) => {
    const n = db.query<{ n: number }, [string]>("select count(*) as n from secondme_messages where user_id = ?").get(userId)!.n;
    db.query("delete from secondme_messages where user_id = ?").run(userId);
    db.query("delete from secondme_sessions where user_id = ?").run(userId);
    return n;
  });
  const appendEvents = db.transaction((rows: LivingMapRowValues[]) => {
    // Prepared here, not up front: the writer opens before the migrations create the table.
    const insertEvent2 = db.query(
      `insert into living_map_history (id, timestamp, event_type, payload, source, entity_id, entity_type, stream_seq)
       values (?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing`,
    );
    let n = 0;
    for (const r of rows) n += insertEvent2.run(...r).changes;
    return n;
  });
  const prune = db.transaction((olderThan: string, limit: number) => {
    const n = db
      .query("delete from living_map_history where seq in (select seq from living_map_history where timestamp < ? order by seq limit ?)")
      .run(olderThan, limit).changes;
    db.query("delete from living_map_snapshots where created_at < ? and id < (select max(id) from living_map_snapshots)").run(olderThan);
    return n;
  });
  return {
    appendLivingMapEvents: (events) => appendEvents(events),
    saveLivingMapSnapshot: (s) => {
      db.query("insert into living_map_snapshots (created_at, last_event_seq, last_stream_seq, scene) values (?, ?, ?, ?)").run(
        s.createdAt, s.lastEventSeq, s.lastStreamSeq, JSON.stringify(s.scene),
      );
    },
    pruneLivingMap: (olderThan, limit) => prune(olderThan, limit),
    appendMessages: (roomId, b) => append(roomId, b),
    appendMessagesMany: (batches) => appendMany(batches),
    createRoom: (r, seed) => create(r, seed),
    secondmeSession: (u, fresh) => session(u, fresh),
    appendSecondmeMessage: (m) => {
      db.query(
        `insert into secondme_messages (id, session_id, user_id, role, content, tokens_used, latency_ms, status, error, created_at)
         values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(m.id, m.session_id, m.user_id, m.role, m.content, m.tokens_used, m.latency_ms, m.status, m.error, m.created_at);
    },
    setSecondmeStatus: (id, status, error) => {
      db.query("update secondme_messages set status = ?, error = ? where id = ?").run(status, error, id);
    },
    clearSecondme: (u) => clear(u),
    updateRoom: (id, patch) => {
      const cols = (["name", "description", "matrix_room_id", "matrix_room_alias"] as const).filter((c) => patch[c] !== undefined);
      if (cols.length === 0) return db.query<Record<string, unknown>, [string]>("select * from city_rooms where id = ?").get(id);
      try {
        return db
          .query<Record<string, unknown>, (string | null)[]>(`update city_rooms set ${cols.map((c) => `${c} = ?`).join(", ")} where id = ? returning *`)
          .get(...cols.map((c) => patch[c] ?? null), id);
      } catch (err) {
        if ((err as { code?: string }).code === "SQLITE_CONSTRAINT_UNIQUE") return "matrix_room_taken";
        throw err;
      }
    },
    saveMatrixSyncToken: (account, nextBatch, at) => {
      db.query(
        "insert into matrix_sync_state (account, next_batch, updated_at) values (?, ?, ?) on conflict (account) do update set next_batch = excluded.next_batch, updated_at = excluded.updated_at",
      ).run(account, nextBatch, at);
    },
    probeWrite: (at) => {
      db.query("insert into city_health (id, probed_at) values (1, ?) on conflict (id) do update set probed_at = excluded.probed_at").run(at);
    },
  };
}
