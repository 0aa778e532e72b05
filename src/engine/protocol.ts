/**
 * Wire events of the sockets, in the seeds' exact shapes (seed 000 §5, seed 003 §6), and their
 * encoding. Outgoing frames are built once per publication as strings (ARCHITECTURE habit 6) and
 * handed to `server.publish` unchanged for every subscriber.
 */
import type { Message } from "../storage/store.ts";
import type { Static } from "@sinclair/typebox";
import type { ErrorCode } from "./errors.ts";
import type { RoomCounts } from "./frames.ts";

/** Hub topic of a room's socket audience. */
export const roomTopic = (roomId: string): string => `room.${roomId}`;
/** Hub topic of the presence sockets' room counts (`{type:"room.presence", …}`). */
export const PRESENCE_COUNTS_TOPIC = "presence.counts";
/** Hub topic of the presence sockets' per-user transitions (`{event:"presence.update", …}`). */
export const PRESENCE_USERS_TOPIC = "presence.users";
/** A room's slug from its id (`room_city_{slug}`, seed 000 §4.1). */
export const slugOfRoom = (roomId: string): string => roomId.replace(/^room_city_/, "");

// ---- incoming ------------------------------------------------------------------------------

/** A decoded client frame: a JSON object with a string `event`. */
export type ClientFrame = { event: string } & Record<string, unknown>;

/**
 * Parses a text frame.
 * @returns the frame, or an error code and message for an `error` frame
 */
export function decodeFrame(raw: string | Buffer): { ok: true; frame: ClientFrame } | { ok: false; code: ErrorCode; message: string } {
  if (typeof raw !== "string") return { ok: false, code: "invalid_frame", message: "frames must be JSON text, not binary" };
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    return { ok: false, code: "invalid_frame", message: "frame is not valid JSON" };
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return { ok: false, code: "invalid_frame", message: "frame must be a JSON object" };
  const ev = (v as Record<string, unknown>).event;
  if (typeof ev !== "string") return { ok: false, code: "invalid_frame", message: "frame needs a string `event`" };
  return { ok: true, frame: v as ClientFrame };
}

// ---- outgoing ------------------------------------------------------------------------------

/**
 * `{ "event": "room.message", "room_id", "message": { id, seq, author_user_id, author_agent_id,
 * body, created_at } }` (seed 000 §5.1; the message in the shape of seed 000 §4.1's room detail,
 * plus its room seq). The room id is said once, at the top: every byte of a frame is paid for once
 * per subscriber. Deterministic: the store's copy of a message encodes to the same frame.
 */
export function encodeRoomMessage(roomId: string, m: Message): string {
  const message = { id: m.id, seq: m.seq, author_user_id: m.author_user_id, author_agent_id: m.author_agent_id, body: m.body, created_at: m.created_at };
  return JSON.stringify({ event: "room.message", room_id: roomId, message });
}

/** `{ "event": "room.join" | "room.leave", "room_id", "user_id" }` (seed 000 §5.1). */
export function encodeRoomMembership(event: "room.join" | "room.leave", roomId: string, userId: string): string {
  return JSON.stringify({ event, room_id: roomId, user_id: userId });
}

/** `{ "event": "room.presence", "room_id", "user_id", "status" }` (seed 000 §5.1). */
export function encodeRoomUserPresence(roomId: string, userId: string, status: "online" | "offline"): string {
  return JSON.stringify({ event: "room.presence", room_id: roomId, user_id: userId, status });
}

/** `{ "event": "room.typing", "room_id", "user_id" }` (SPEC "WebSockets"). */
export function encodeRoomTyping(roomId: string, userId: string): string {
  return JSON.stringify({ event: "room.typing", room_id: roomId, user_id: userId });
}

/** `{ "event": "presence.update", "user_id", "status" }` (seed 000 §5.2). */
export function encodePresenceUpdate(userId: string, status: "online" | "offline"): string {
  return JSON.stringify({ event: "presence.update", user_id: userId, status });
}

/** One room's numbers as the presence socket carries them (seed 003 §6.2; schema in `frames.ts`). */
export type RoomPresenceCounts = Static<typeof RoomCounts>;

/**
 * `{ "type": "snapshot", "rooms": [{ room_slug, online_count, typing_count }] }` (seed 003 §6.2),
 * plus `matrix_presence` (`ok`, or `unknown` while the homeserver has sent no presence at all)
 * when a Matrix homeserver is configured.
 */
export function encodePresenceSnapshot(rooms: RoomPresenceCounts[], matrixPresence: "ok" | "unknown" | null = null): string {
  return JSON.stringify(matrixPresence ? { type: "snapshot", rooms, matrix_presence: matrixPresence } : { type: "snapshot", rooms });
}

/** `{ "type": "room.presence", room_slug, online_count, typing_count }` (seed 003 §6.2). */
export function encodeRoomPresenceCounts(c: RoomPresenceCounts): string {
  return JSON.stringify({ type: "room.presence", room_slug: c.room_slug, online_count: c.online_count, typing_count: c.typing_count });
}

/** `{ "event": "auth.refreshed", "expires_at" }`: the answer to an accepted `auth.refresh`. */
export function encodeAuthRefreshed(expiresAtMs: number): string {
  return JSON.stringify({ event: "auth.refreshed", expires_at: new Date(expiresAtMs).toISOString() });
}

/** `{ "event": "error", "code", "message" }` (SPEC "WebSockets"). */
export function encodeError(code: ErrorCode, message: string): string {
  return JSON.stringify({ event: "error", code, message });
}
