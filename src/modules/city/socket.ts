/**
 * Room socket `/ws/city/rooms/{room_id}` (seed 000 §5.1, SPEC "WebSockets").
 *
 * - Anyone may connect and read; `room.message.send` and `room.typing` need a token (`?token=`
 *   or `Authorization`). `auth.refresh` replaces the token before it expires (else 4001).
 * - On open the socket is in the room: in its stream (seq order, gaps filled from the store) and,
 *   with a token, held in the room's presence (the user counts in `members_online` while they also
 *   heartbeat). A user's first socket in the room on any instance is announced once as `room.join`
 *   and `room.presence` online, their last one leaving as `room.leave` and `room.presence` offline
 *   (by the presence service, while the room has at most ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS users).
 *   `room.leave` / `room.join` frames step out and back in.
 * - `room.typing` marks the user typing for TYPING_TTL_SECONDS and tells the room (at most once
 *   per 2 s per socket).
 * - `?since=<seq or message id>` first replays what was missed, in seq order, then goes live
 *   (recovery), on any instance.
 * - A message is acknowledged by its `room.message` echo, sent only after it is durable.
 * - Every bad frame gets an `error` frame; the socket stays open except for an oversize frame.
 */
import type { ServerWebSocket } from "bun";
import type { TokenVerifier } from "../../auth/tokens.ts";
import { AppError, CLOSE } from "../../engine/errors.ts";
import type { PresenceTracker } from "../../engine/presence/presence.ts";
import { encodeError, encodeRoomMessage, encodeRoomTyping, type ClientFrame } from "../../engine/protocol.ts";
import { readFrame, refreshSocketToken, upgradePrincipal, type SocketData, type SocketRoute } from "../../engine/sockets.ts";
import type { RoomStreams } from "../../engine/streams.ts";
import { ROOM_ID_RE } from "../../ids.ts";
import type { Logger } from "../../log.ts";
import { seqCursor, type CityService } from "./service.ts";

export interface RoomSocketData extends SocketData {
  route: "room";
  roomId: string;
  userId: string | null;
  /** Recover from this seq on open (`null`: live from now). */
  since: number | null;
  /** In the room: in its stream (or recovering) and counted. */
  joined: boolean;
  /** When this socket last told the room its user is typing (epoch ms). */
  typingAnnouncedAt: number;
}

/** A socket tells the room about typing at most this often, ms. */
const TYPING_ANNOUNCE_MS = 2000;

export interface RoomSocketOptions {
  city: CityService;
  streams: RoomStreams;
  presence: PresenceTracker;
  verifier: TokenVerifier;
  log: Logger;
  maxFrameBytes: number;
  recoveryMax: number;
  /** Per-user room events only while the room has at most this many users holding a socket. */
  membershipEventsMaxMembers: number;
}

const PATH = /^\/ws\/city\/rooms\/([^/]+)\/?$/;

type RoomSocket = ServerWebSocket<RoomSocketData>;

export function roomSocketRoute(o: RoomSocketOptions): SocketRoute<RoomSocketData> {
  const sendError = (ws: RoomSocket, code: Parameters<typeof encodeError>[0], message: string) => {
    ws.send(encodeError(code, message));
  };

  const fail = (ws: RoomSocket, err: unknown) => {
    if (err instanceof AppError) sendError(ws, err.code, err.message);
    else {
      o.log.error("room socket: handler failed", { err });
      sendError(ws, "internal", "internal error");
    }
  };

  /** Puts the socket in the room: count, then the stream (after recovery when asked). */
  const enter = (ws: RoomSocket, since: number | null) => {
    const d = ws.data;
    d.joined = true;
    if (d.userId) o.presence.hold(d.roomId, d.userId);
    if (since === null) {
      o.streams.join(ws as ServerWebSocket<unknown>, d.roomId);
      return;
    }
    o.streams.joinWithRecovery(ws as ServerWebSocket<unknown>, d.roomId, since, o.recoveryMax).then(
      (r) => {
        if (r?.truncated) {
          sendError(ws, "recovery_truncated", `more than ${o.recoveryMax} messages were missed; page older ones with GET /city/rooms/${d.roomId}/messages?before=…`);
        }
      },
      (err) => {
        // Not in the stream: the client must not believe it is live. Tell it, then close so it retries.
        d.joined = false;
        if (d.userId) o.presence.release(d.roomId, d.userId);
        if (ws.readyState !== 1) return;
        sendError(ws, "store_unavailable", `could not read the messages after ${since}; reconnect with since`);
        ws.close(CLOSE.internal, "recovery failed; reconnect with since");
        o.log.warn("room socket: recovery failed", { room_id: d.roomId, err });
      },
    );
  };

  /** Takes the socket out of the room; `closed` sockets are unsubscribed by Bun already. */
  const exit = (ws: RoomSocket, closed: boolean) => {
    const d = ws.data;
    if (!d.joined) return;
    d.joined = false;
    o.streams.leave(ws as ServerWebSocket<unknown>, d.roomId, closed);
    if (d.userId) o.presence.release(d.roomId, d.userId);
  };

  const onFrame = (ws: RoomSocket, f: ClientFrame, readAt: number) => {
    const d = ws.data;
    if (f.event === "auth.refresh") return refreshSocketToken(ws, f, o.verifier);
    if (f.room_id !== undefined && f.room_id !== d.roomId) {
      sendError(ws, "room_mismatch", `this socket is for ${d.roomId}; connect to /ws/city/rooms/${String(f.room_id)} for that room`);
      return;
    }
    switch (f.event) {
      case "room.message.send": {
        if (!d.userId) return sendError(ws, "unauthorized", "sending needs a token (?token=… on connect)");
        o.city.postMessage(d.roomId, d.userId, f.body, readAt).then(
          (m) => {
            // Sockets in the room get the echo from the stream; one that stepped out gets it here.
            if (!d.joined && ws.readyState === 1) ws.send(encodeRoomMessage(d.roomId, m));
          },
          (err) => ws.readyState === 1 && fail(ws, err),
        );
        return;
      }
      case "room.join":
        if (!d.joined) enter(ws, null);
        return;
      case "room.typing": {
        if (!d.userId) return sendError(ws, "unauthorized", "typing needs a token (?token=… on connect)");
        o.presence.typing(d.roomId, d.userId);
        const now = Date.now();
        if (now - d.typingAnnouncedAt >= TYPING_ANNOUNCE_MS && o.presence.roomUsersAtLeast(d.roomId) <= o.membershipEventsMaxMembers) {
          d.typingAnnouncedAt = now;
          o.streams.publishEvent(d.roomId, encodeRoomTyping(d.roomId, d.userId));
        }
        return;
      }
      case "room.leave":
        exit(ws, false);
        return;
      default:
        sendError(ws, "unknown_event", `unknown event "${f.event}"; expected room.join, room.leave, room.typing, room.message.send or auth.refresh`);
    }
  };

  return {
    name: "room",
    match(pathname) {
      const m = PATH.exec(pathname);
      if (!m) return null;
      if (!m[1]!.includes("%")) return { room_id: m[1]! };
      try {
        return { room_id: decodeURIComponent(m[1]!) };
      } catch {
        return { room_id: m[1]! }; // malformed percent-encoding: no such room
      }
    },
    prepare(req, query, params) {
      const roomId = params.room_id!;
      const principal = upgradePrincipal(req, query, o.verifier);
      if (!ROOM_ID_RE.test(roomId)) throw new AppError("room_not_found", `room ${roomId} does not exist`);
      const raw = query.get("since");
      const data = (since: number | null): RoomSocketData => ({
        route: "room", roomId, userId: principal?.userId ?? null, expiresAt: principal?.expiresAt ?? null, since, joined: false, typingAnnouncedAt: 0,
      });
      // The usual connect (a known room, no cursor or a seq) is decided here, without the store.
      const seq = raw === null ? null : seqCursor(raw);
      if (o.city.knowsRoom(roomId) && (raw === null || seq !== null)) return data(seq);
      return (async () => {
        await o.city.requireRoom(roomId);
        return data(raw === null ? null : await o.city.resolveCursor(roomId, raw, "since"));
      })();
    },
    open(ws) {
      enter(ws, ws.data.since);
    },
    message(ws, raw) {
      const readAt = performance.now();
      const frame = readFrame(ws, raw, o.maxFrameBytes);
      if (!frame) return;
      try {
        onFrame(ws, frame, readAt);
      } catch (err) {
        fail(ws, err);
      }
    },
    close(ws) {
      exit(ws, true);
    },
  };
}
