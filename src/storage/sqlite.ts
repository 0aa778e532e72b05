/**
 * SqliteStore: the embedded default store (SPEC "Engines"), a `bun:sqlite` file in DATA_DIR in WAL
 * mode. Single machine only: one process should own the file (a second process can share it, and
 * SQLite serialises the writers, but the realtime fan-out between them needs NATS).
 */
import { Database } from "bun:sqlite";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { checksum, SQLITE_MIGRATIONS, type Migration } from "./migrations.ts";
import type { FeedEvent, Message, MessageQuery, MessageWrite, Room, RoomMatrixMapping, RoomSummary, Store } from "./store.ts";

interface RoomRow extends Omit<Room, "is_default"> {
  is_default: number;
}
interface FeedRow extends Omit<FeedEvent, "payload"> {
  payload: string;
}

export interface SqliteStoreOptions {
  /** Database file; `:memory:` for a throwaway store. */
  file: string;
  /** `FULL`: every commit is fsynced before it is acknowledged. `NORMAL`: survives process crashes only. */
  synchronous?: "FULL" | "NORMAL";
  /** Migrations to apply (default: the embedded list). */
  migrations?: Migration[];
}

export class SqliteStore implements Store {
  readonly engine = "sqlite" as const;
  private readonly db: Database;
  private readonly migrations: Migration[];
  private closed = false;

  constructor(opts: SqliteStoreOptions) {
    if (opts.file !== ":memory:") mkdirSync(path.dirname(opts.file), { recursive: true });
    this.db = new Database(opts.file, { create: true, strict: true });
    this.db.exec("PRAGMA journal_mode = WAL");
    this.db.exec(`PRAGMA synchronous = ${opts.synchronous ?? "FULL"}`);
    this.db.exec("PRAGMA foreign_keys = ON");
    this.db.exec("PRAGMA busy_timeout = 5000");
    this.migrations = opts.migrations ?? SQLITE_MIGRATIONS;
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

  async createRoom(room: Room, seed: { messages: Message[]; events: FeedEvent[] }): Promise<boolean> {
    return this.db.transaction(() => {
      const res = this.db
        .query(
          `insert into city_rooms (id, slug, name, description, is_default, created_at, created_by, matrix_room_id, matrix_room_alias)
           values (?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing`,
        )
        .run(room.id, room.slug, room.name, room.description, room.is_default ? 1 : 0, room.created_at, room.created_by, room.matrix_room_id, room.matrix_room_alias);
      if (res.changes === 0) return false;
      for (const m of seed.messages) this.insertMessage(m);
      for (const e of seed.events) this.insertEvent(e);
      return true;
    })();
  }

  async appendMessages(batch: MessageWrite[]): Promise<void> {
    this.db.transaction(() => {
      for (const { message, event } of batch) {
        this.insertMessage(message);
        this.insertEvent(event);
      }
    })();
  }

  async listMessages(roomId: string, q: MessageQuery): Promise<Message[]> {
    const rows = this.db
      .query<Message, [string, string | null, string | null, number]>(
        `select id, room_id, author_user_id, author_agent_id, body, created_at from city_room_messages
         where room_id = ?1 and (?2 is null or id < ?2) and (?3 is null or id > ?3)
         order by id desc limit ?4`,
      )
      .all(roomId, q.before ?? null, q.after ?? null, q.limit);
    return rows.reverse();
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

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }

  private insertMessage(m: Message): void {
    this.db
      .query("insert into city_room_messages (id, room_id, author_user_id, author_agent_id, body, created_at) values (?, ?, ?, ?, ?, ?)")
      .run(m.id, m.room_id, m.author_user_id, m.author_agent_id, m.body, m.created_at);
  }

  private insertEvent(e: FeedEvent): void {
    this.db
      .query("insert into city_feed_events (id, kind, room_id, user_id, agent_id, payload, created_at) values (?, ?, ?, ?, ?, ?, ?)")
      .run(e.id, e.kind, e.room_id, e.user_id, e.agent_id, JSON.stringify(e.payload), e.created_at);
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
