/**
 * CityService: rooms, messages and the feed (seed 000 §4, seed 001 "City Service Backend"). It
 * knows nothing of HTTP or Elysia; the HTTP controller (`index.ts`) and the room socket
 * (`socket.ts`) both call it, so a message takes the same path whichever way it arrives.
 */
import type { Clock } from "../../clock.ts";
import type { Broker } from "../../engine/broker/broker.ts";
import { AppError } from "../../engine/errors.ts";
import { encodeRoomMembership, encodeRoomMessage } from "../../engine/protocol.ts";
import type { Limit } from "../../engine/ratelimit.ts";
import type { RoomHistory, RoomStreams } from "../../engine/streams.ts";
import { IdGenerator, isId, roomIdForSlug, SLUG_RE } from "../../ids.ts";
import { checkText } from "../../text.ts";
import type { StageObserver } from "../../engine/latency.ts";
import type { Logger } from "../../log.ts";
import type { FeedEvent, Message, NewMessage, Room, RoomMatrixMapping, RoomPatch, RoomSummary, Store } from "../../storage/store.ts";
import { MessageWriter } from "./writer.ts";

/** Body text limits (SPEC "HTTP API": 1 to 4,000 characters after trimming). */
export const BODY_MAX_CHARS = 4000;
/** Room name and description limits (characters after trimming). */
export const ROOM_NAME_MAX_CHARS = 100;
export const ROOM_DESCRIPTION_MAX_CHARS = 1000;
/** Messages in a room detail (seed 000 §4.1 "останні 50 повідомлень"). */
export const ROOM_DETAIL_MESSAGES = 50;
/** NATS subject of the city event for each new message (seed 002/004 listen on `city.event.*`). */
export const ROOM_MESSAGE_EVENT_SUBJECT = "city.event.room_message";

/** A Matrix room id (`!opaque:server`), as seed 003 §3.1 `matrix_room_id`. */
export const MATRIX_ROOM_ID_RE = /^![^\s:]{1,255}:[^\s]{1,255}$/;
/** A Matrix room alias (`#localpart:server`), as seed 003 §3.1 `matrix_room_alias`. */
export const MATRIX_ROOM_ALIAS_RE = /^#[^\s:]{1,255}:[^\s]{1,255}$/;

/** The Matrix mapping fields of a room as a request gives them (absent: unchanged; null: cleared). */
export interface MatrixMappingInput {
  matrix_room_id?: string | null;
  matrix_room_alias?: string | null;
}

/** Who is in a room (the presence tracker's view). */
export interface RoomOccupancy {
  /** Distinct users counted online in `roomId`. */
  count(roomId: string): number;
  /** Distinct users holding a socket in `roomId` on any instance, online or not. */
  holders(roomId: string): number;
}

export interface CityServiceOptions {
  store: Store;
  streams: RoomStreams;
  broker: Broker;
  occupancy: RoomOccupancy;
  /** Per-user budget of writes (messages, rooms, join/leave announcements). */
  writeLimit: Limit;
  /** Join/leave announcements only while a room has at most this many users (as socket joins). */
  membershipEventsMaxMembers: number;
  clock: Clock;
  log: Logger;
  ids?: IdGenerator;
  /** Called after this instance created or changed a room (room lists and the Matrix mapping change). */
  onRoomCreated?: () => void;
  /** Called with the number of messages of each committed and published batch. */
  onPublished?: (count: number) => void;
  /** Where each message's time goes (`/metrics` histograms). */
  stages?: StageObserver;
}

export interface RoomDetail {
  room: Room;
  messages: Message[];
  members_online: number;
}

/** Trims and checks a message body (SPEC Text rules). @throws AppError `validation_failed` */
export function validateBody(body: unknown): string {
  return checkText(body, "body", 1, BODY_MAX_CHARS);
}

/** A default room's display name: its slug with a capital first letter (seed 000 §8: "General"). */
function titleOf(slug: string): string {
  const words = slug.split(/[-_]/).filter(Boolean);
  return words.map((w) => w[0]!.toUpperCase() + w.slice(1)).join(" ") || slug;
}

/** Descriptions the seeds give for default rooms; other rooms have none rather than an invented one. */
const SEED_DESCRIPTIONS: Record<string, string> = { general: "Головна кімната міста" };

export class CityService {
  readonly writer: MessageWriter;
  private readonly ids: IdGenerator;
  /** Rooms known to exist; rooms are never deleted, so a hit never goes stale. */
  private readonly knownRooms = new Set<string>();

  constructor(private readonly o: CityServiceOptions) {
    this.ids = o.ids ?? new IdGenerator();
    this.writer = new MessageWriter({
      store: o.store,
      ids: this.ids,
      clock: o.clock,
      log: o.log,
      onCommitted: (messages) => this.publishCommitted(messages),
      stages: o.stages,
      // A sender's next message may go before its last is answered only where the store keeps call order.
      pipelineDepth: o.store.appendsInOrder ? 2 : 1,
      // An append that commits on this thread blocks the loop for its fsync: one per turn, not per message.
      gatherTurn: () => o.store.commitsOnCaller,
    });
  }

  /** The store seen as room frames, for room streams' gap filling, positioning and recovery. */
  readonly history: RoomHistory = {
    lastSeqs: (roomIds) => this.o.store.lastSeqs(roomIds),
    read: async (roomId, q) => {
      const rows = await this.o.store.listMessages(roomId, { afterSeq: q.afterSeq, beforeSeq: q.beforeSeq, limit: q.limit, oldest: q.oldest });
      return rows.map((m) => ({ seq: m.seq, frame: encodeRoomMessage(roomId, m) }));
    },
  };

  /**
   * Creates the CITY_DEFAULT_ROOMS that do not exist yet, each with a welcome message and a
   * `system` feed event, both only on first creation (seed 001 "Seed дані").
   * @returns the slugs created now
   */
  async ensureDefaultRooms(slugs: string[]): Promise<string[]> {
    const created: string[] = [];
    let last = 0;
    for (const slug of slugs) {
      // Strictly increasing, so the rooms list in CITY_DEFAULT_ROOMS order even within one ms.
      const now = (last = Math.max(this.o.clock.now(), last + 1));
      const room = this.newRoom(slug, titleOf(slug), SEED_DESCRIPTIONS[slug] ?? null, null, true, now);
      const welcome: NewMessage = {
        id: this.ids.make("message", now), room_id: room.id, author_user_id: null, author_agent_id: null,
        body: `Ласкаво просимо до кімнати ${room.name}!`, created_at: room.created_at,
      };
      const event = this.systemEvent(room, `Кімнату ${room.name} створено`, now);
      if (await this.o.store.createRoom(room, { messages: [welcome], events: [event] })) created.push(slug);
      this.knownRooms.add(room.id);
    }
    return created;
  }

  /** Rooms with `members_online` and `last_event` (seed 000 §4.1 `GET /city/rooms`). */
  async listRooms(limit: number, offset: number): Promise<(RoomSummary & { members_online: number })[]> {
    const rooms = await this.o.store.listRooms({ limit, offset });
    return rooms.map((r) => ({ ...r, members_online: this.o.occupancy.count(r.id) }));
  }

  /**
   * Creates a room (`id = room_city_{slug}`) and a `system` feed event.
   * @throws AppError `slug_taken` (409) when the slug is in use; `validation_failed` for a bad slug;
   *   `rate_limited` when the user is over the write budget
   */
  async createRoom(
    userId: string,
    input: { name: string; slug: string; description?: string | null } & MatrixMappingInput,
    isAdmin = false,
  ): Promise<Room> {
    if (!SLUG_RE.test(input.slug)) throw new AppError("validation_failed", "slug must match ^[a-z0-9][a-z0-9_-]{0,62}$");
    const name = checkText(input.name, "name", 1, ROOM_NAME_MAX_CHARS);
    const description = input.description == null ? null : checkText(input.description, "description", 0, ROOM_DESCRIPTION_MAX_CHARS) || null;
    const mapping = checkMatrixMapping(input, isAdmin);
    await this.takeWrite(userId);
    const now = this.o.clock.now();
    const room = { ...this.newRoom(input.slug, name, description, userId, false, now), ...mapping };
    const event = this.systemEvent(room, `Кімнату ${room.name} створено`, now, userId);
    if (!(await this.o.store.createRoom(room, { messages: [], events: [event] }))) {
      if (room.matrix_room_id && (await this.o.store.getRoom(room.id)) === null) {
        throw new AppError("matrix_room_taken", `another room already maps to ${room.matrix_room_id}`);
      }
      throw new AppError("slug_taken", `a room with slug "${input.slug}" already exists`);
    }
    this.knownRooms.add(room.id);
    this.o.onRoomCreated?.();
    return room;
  }

  /**
   * Changes a room's name, description or Matrix mapping (SPEC `PATCH /city/rooms/{room_id}`, the
   * mapping of seed 003 §3.2). Admins only; absent fields keep their value, `null` clears.
   * @throws AppError `forbidden` (403) for a non-admin; `validation_failed` for a bad field or an
   *   empty change; `room_not_found`; `matrix_room_taken` (409) when another room maps to that
   *   Matrix room; `rate_limited`
   */
  async updateRoom(userId: string, roomId: string, input: { name?: string; description?: string | null } & MatrixMappingInput, isAdmin: boolean): Promise<Room> {
    if (!isAdmin) throw new AppError("forbidden", "only an admin may change a room (CITY_ADMIN_USERS, or a token with role \"admin\")");
    const patch: RoomPatch = checkMatrixMapping(input, true);
    if (input.name !== undefined) patch.name = checkText(input.name, "name", 1, ROOM_NAME_MAX_CHARS);
    if (input.description !== undefined) {
      patch.description = input.description === null ? null : checkText(input.description, "description", 0, ROOM_DESCRIPTION_MAX_CHARS) || null;
    }
    if (Object.keys(patch).length === 0) throw new AppError("validation_failed", "give at least one of name, description, matrix_room_id, matrix_room_alias");
    await this.takeWrite(userId);
    const result = await this.o.store.updateRoom(roomId, patch);
    if (result === "not_found") throw notFound(roomId);
    if (result === "matrix_room_taken") throw new AppError("matrix_room_taken", `another room already maps to ${patch.matrix_room_id}`);
    this.o.onRoomCreated?.();
    return result;
  }

  /**
   * A room with its last 50 messages oldest-first and `members_online`.
   * @throws AppError `room_not_found`
   */
  async getRoomDetail(roomId: string): Promise<RoomDetail> {
    const room = await this.o.store.getRoom(roomId);
    if (!room) throw notFound(roomId);
    this.knownRooms.add(room.id);
    const messages = await this.o.store.listMessages(roomId, { limit: ROOM_DETAIL_MESSAGES });
    return { room, messages, members_online: this.o.occupancy.count(roomId) };
  }

  /** True when the room is known to exist without asking the store (rooms are never deleted). */
  knowsRoom(roomId: string): boolean {
    return this.knownRooms.has(roomId);
  }

  /** @throws AppError `room_not_found` when the room does not exist */
  async requireRoom(roomId: string): Promise<void> {
    if (this.knownRooms.has(roomId)) return;
    if (!(await this.o.store.getRoom(roomId))) throw notFound(roomId);
    this.knownRooms.add(roomId);
  }

  /**
   * Posts a message as `userId`: durable in the store with its feed event, then published to the
   * room's sockets on every instance and to `city.event.room_message`.
   * @returns the stored message (the acknowledgement)
   * @throws AppError `validation_failed`, `room_not_found`, `rate_limited`, `store_unavailable`
   */
  async postMessage(roomId: string, userId: string, body: unknown, receivedAt = performance.now()): Promise<Message> {
    const text = validateBody(body);
    await this.requireRoom(roomId);
    await this.takeWrite(userId);
    const admittedAt = performance.now();
    this.o.stages?.observe("admit", (admittedAt - receivedAt) / 1000);
    return this.writer.write({ roomId, authorUserId: userId, authorAgentId: null, body: text, receivedAt, admittedAt });
  }

  /**
   * Messages of a room in seq order; with `before` (a message id or a seq), the page just older.
   * @throws AppError `invalid_cursor`, `room_not_found`
   */
  async listMessages(roomId: string, before: string | undefined, limit: number): Promise<Message[]> {
    await this.requireRoom(roomId);
    const beforeSeq = before === undefined ? undefined : await this.resolveCursor(roomId, before, "before");
    return this.o.store.listMessages(roomId, { beforeSeq, limit });
  }

  /**
   * A message cursor as a seq: a seq (`"41"`) as it is, a message id looked up in the room.
   * @throws AppError `invalid_cursor` for anything else, or an id the room does not have
   */
  async resolveCursor(roomId: string, cursor: string, name: "before" | "since"): Promise<number> {
    const asSeq = seqCursor(cursor);
    if (asSeq !== null) return asSeq;
    if (!isId("message", cursor)) throw new AppError("invalid_cursor", `${name} must be a message seq or id (m_city_<ULID>)`);
    const seq = await this.o.store.messageSeq(roomId, cursor);
    if (seq === null) throw new AppError("invalid_cursor", `${name}: room ${roomId} has no message ${cursor}`);
    return seq;
  }

  /**
   * Announces that `userId` joined or left a room (seed 001 `POST /city/rooms/{id}/join|leave`):
   * a `room.join`/`room.leave` event to the room's sockets on every instance, within the user's
   * write budget, and only while the room has at most ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS users
   * (as socket joins: above it every join would go to everyone).
   * @returns whether the event went out
   * @throws AppError `room_not_found`, `rate_limited`
   */
  async announceMembership(roomId: string, userId: string, event: "room.join" | "room.leave"): Promise<boolean> {
    await this.requireRoom(roomId);
    await this.takeWrite(userId);
    if (this.o.occupancy.holders(roomId) > this.o.membershipEventsMaxMembers) return false;
    this.o.streams.publishEvent(roomId, encodeRoomMembership(event, roomId, userId));
    return true;
  }

  /**
   * Feed events newest-first (seed 000 §4.1 `GET /city/feed`).
   * @throws AppError `invalid_cursor`
   */
  async listFeed(before: string | undefined, limit: number): Promise<FeedEvent[]> {
    if (before !== undefined && !isId("feedEvent", before)) throw new AppError("invalid_cursor", "before must be a feed event id (evt_city_<ULID>)");
    return this.o.store.listFeed({ before, limit });
  }

  /** Slug and Matrix mapping of every room (seed 003 §3.2 `GET /internal/city/rooms`). */
  listRoomMappings(): Promise<RoomMatrixMapping[]> {
    return this.o.store.listRoomMatrixMappings();
  }

  /** @throws AppError `rate_limited` */
  async takeWrite(userId: string): Promise<void> {
    const wait = await this.o.writeLimit.take(userId);
    if (wait > 0) throw new AppError("rate_limited", `too many writes; retry in ${wait} s`, wait);
  }

  private publishCommitted(messages: Message[]): void {
    for (const m of messages) {
      const frame = encodeRoomMessage(m.room_id, m);
      this.o.streams.publishMessage(m.room_id, m.seq, frame);
      this.o.broker.publish(ROOM_MESSAGE_EVENT_SUBJECT, frame);
    }
    this.o.onPublished?.(messages.length);
  }

  private newRoom(slug: string, name: string, description: string | null, createdBy: string | null, isDefault: boolean, now: number): Room {
    return {
      id: roomIdForSlug(slug), slug, name, description, is_default: isDefault, created_at: new Date(now).toISOString(),
      created_by: createdBy, matrix_room_id: null, matrix_room_alias: null,
    };
  }

  private systemEvent(room: Room, text: string, now: number, userId: string | null = null): FeedEvent {
    const payload = { body: text, snippet: text, room_slug: room.slug };
    return { id: this.ids.make("feedEvent", now), kind: "system", room_id: room.id, user_id: userId, agent_id: null, payload, created_at: room.created_at };
  }
}

/**
 * The Matrix fields of a create or change request, checked.
 * @returns only the fields given (an absent one stays absent)
 * @throws AppError `forbidden` when a non-admin gives one; `validation_failed` for a malformed id or alias
 */
function checkMatrixMapping(input: MatrixMappingInput, isAdmin: boolean): MatrixMappingInput {
  const out: MatrixMappingInput = {};
  for (const [field, re, example] of [
    ["matrix_room_id", MATRIX_ROOM_ID_RE, "!abc123:daarion.space"],
    ["matrix_room_alias", MATRIX_ROOM_ALIAS_RE, "#city_energy:daarion.space"],
  ] as const) {
    const v = input[field];
    if (v === undefined) continue;
    if (!isAdmin) throw new AppError("forbidden", `only an admin may set ${field} (CITY_ADMIN_USERS, or a token with role "admin")`);
    if (v !== null && !re.test(v)) throw new AppError("validation_failed", `${field} must look like ${example}`);
    out[field] = v;
  }
  return out;
}

function notFound(roomId: string): AppError {
  return new AppError("room_not_found", `room ${roomId} does not exist`);
}

/** A cursor that is a seq (`"41"`, up to 15 digits) as a number; `null` for anything else (a message id, or invalid). */
export function seqCursor(cursor: string): number | null {
  return /^\d{1,15}$/.test(cursor) ? Number(cursor) : null;
}
