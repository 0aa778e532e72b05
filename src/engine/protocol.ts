/**
 * Wire events of the sockets, in the seeds' exact shapes (seed 000 §5, seed 003 §6), and their
 * encoding. Outgoing frames are built once per publication as strings (ARCHITECTURE habit 6) and
 * handed to `server.publish` unchanged for every subscriber.
 */
import type { Message } from "../storage/store.ts";
import type { ErrorCode } from "./errors.ts";

/** Hub topic of a room's socket audience. */
export const roomTopic = (roomId: string): string => `room.${roomId}`;

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

/** `{ "event": "room.message", "room_id", "message": {…} }` (seed 000 §5.1). */
export function encodeRoomMessage(roomId: string, message: Message): string {
  return JSON.stringify({ event: "room.message", room_id: roomId, message });
}

/** `{ "event": "room.join" | "room.leave", "room_id", "user_id" }` (seed 000 §5.1). */
export function encodeRoomMembership(event: "room.join" | "room.leave", roomId: string, userId: string): string {
  return JSON.stringify({ event, room_id: roomId, user_id: userId });
}

/** `{ "event": "error", "code", "message" }` (SPEC "WebSockets"). */
export function encodeError(code: ErrorCode, message: string): string {
  return JSON.stringify({ event: "error", code, message });
}
