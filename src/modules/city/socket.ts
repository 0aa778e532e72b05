/**
 * Room socket `/ws/city/rooms/{room_id}` (seed 000 §5.1, SPEC "WebSockets").
 *
 * - Anyone may connect and read; `room.message.send` and `room.typing` need a token (`?token=`
 *   or `Authorization`).
 * - On open the socket is in the room: subscribed to its topic and, with a token, held in the
 *   room's presence (the user counts in `members_online` while they also heartbeat). A user's
 *   first socket in a room announces `room.join` and `room.presence` online; their last one
 *   leaving announces `room.leave` and `room.presence` offline. These per-user events go out only
 *   while this instance holds at most ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS users in the room
 *   (above that every join would go to everyone). `room.leave` / `room.join` frames step out and
 *   back in.
 * - `room.typing` marks the user typing for TYPING_TTL_SECONDS and tells the room (at most once
 *   per 2 s per socket).
 * - `?since=<message id>` first replays what was missed, in order, then goes live (recovery).
 * - A message is acknowledged by its `room.message` echo, sent only after it is durable.
 * - Every bad frame gets an `error` frame; the socket stays open except for an oversize frame.
 */
import type { ServerWebSocket } from "bun";
import type { TokenVerifier } from "../../auth/tokens.ts";
import { AppError, CLOSE } from "../../engine/errors.ts";
import type { Hub } from "../../engine/hub.ts";
import type { PresenceManager } from "../../engine/presence/presence.ts";
import {
  encodeError, encodeRoomMembership, encodeRoomMessage, encodeRoomTyping, encodeRoomUserPresence, roomTopic, type ClientFrame,
} from "../../engine/protocol.ts";
import { readFrame, upgradeToken, type SocketData, type SocketRoute } from "../../engine/sockets.ts";
import { isId, ROOM_ID_RE } from "../../ids.ts";
import type { Logger } from "../../log.ts";
import type { CityService } from "./service.ts";

export interface RoomSocketData extends SocketData {
  route: "room";
  roomId: string;
  userId: string | null;
  since: string | null;
  /** In the room: subscribed (or recovering) and counted. */
  joined: boolean;
  /** When this socket last told the room its user is typing (epoch ms). */
  typingAnnouncedAt: number;
}

/** A socket tells the room about typing at most this often, ms. */
const TYPING_ANNOUNCE_MS = 2000;

export interface RoomSocketOptions {
  city: CityService;
  hub: Hub;
  presence: PresenceManager;
  verifier: TokenVerifier;
  log: Logger;
  maxFrameBytes: number;
  recoveryMax: number;
  /** Per-user room events only while this instance holds at most this many users in the room. */
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

  /** `room.join`/`room.leave` and the matching `room.presence`, unless the room is too large for per-user events. */
  const announce = (roomId: string, userId: string, event: "room.join" | "room.leave") => {
    const users = o.presence.localUserCount(roomId);
    if (event === "room.join" ? users > o.membershipEventsMaxMembers : users >= o.membershipEventsMaxMembers) return;
    const topic = roomTopic(roomId);
    o.hub.publish(topic, { cursor: null, frame: encodeRoomMembership(event, roomId, userId) });
    o.hub.publish(topic, { cursor: null, frame: encodeRoomUserPresence(roomId, userId, event === "room.join" ? "online" : "offline") });
  };

  /** Puts the socket in the room: count, announce, subscribe (after recovery when asked). */
  const enter = (ws: RoomSocket, since: string | null) => {
    const d = ws.data;
    d.joined = true;
    if (d.userId && o.presence.hold(d.roomId, d.userId)) announce(d.roomId, d.userId, "room.join");
    const topic = roomTopic(d.roomId);
    if (!since) {
      ws.subscribe(topic);
      return;
    }
    let truncated = false;
    o.hub
      .subscribeWithRecovery(ws, topic, async () => {
        const missed = await o.city.missedMessages(d.roomId, since, o.recoveryMax);
        truncated = missed.truncated;
        return missed.messages.map((m) => ({ cursor: m.id, frame: encodeRoomMessage(d.roomId, m) }));
      })
      .then((replayed) => {
        if (replayed !== null && truncated) {
          const first = replayed > 0 ? " before the first replayed message" : "";
          sendError(ws, "recovery_truncated", `more than ${o.recoveryMax} messages were missed; page older ones with GET /city/rooms/${d.roomId}/messages?before=…${first}`);
        }
      })
      .catch((err) => {
        // Not subscribed: the client must not believe it is live. Tell it, then close so it retries.
        fail(ws, err);
        ws.close(CLOSE.internal, "recovery failed; reconnect with since");
      });
  };

  /** Takes the socket out of the room; `closed` sockets are unsubscribed by Bun already. */
  const exit = (ws: RoomSocket, closed: boolean) => {
    const d = ws.data;
    if (!d.joined) return;
    d.joined = false;
    if (!closed) ws.unsubscribe(roomTopic(d.roomId));
    if (d.userId && o.presence.release(d.roomId, d.userId)) announce(d.roomId, d.userId, "room.leave");
  };

  const onFrame = (ws: RoomSocket, f: ClientFrame) => {
    const d = ws.data;
    if (f.room_id !== undefined && f.room_id !== d.roomId) {
      sendError(ws, "room_mismatch", `this socket is for ${d.roomId}; connect to /ws/city/rooms/${String(f.room_id)} for that room`);
      return;
    }
    switch (f.event) {
      case "room.message.send": {
        if (!d.userId) return sendError(ws, "unauthorized", "sending needs a token (?token=… on connect)");
        o.city.postMessage(d.roomId, d.userId, f.body).then(
          (m) => {
            // Subscribed sockets get the echo from the topic; one that stepped out gets it here.
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
        if (now - d.typingAnnouncedAt >= TYPING_ANNOUNCE_MS && o.presence.localUserCount(d.roomId) <= o.membershipEventsMaxMembers) {
          d.typingAnnouncedAt = now;
          o.hub.publish(roomTopic(d.roomId), { cursor: null, frame: encodeRoomTyping(d.roomId, d.userId) });
        }
        return;
      }
      case "room.leave":
        exit(ws, false);
        return;
      default:
        sendError(ws, "unknown_event", `unknown event "${f.event}"; expected room.join, room.leave, room.typing or room.message.send`);
    }
  };

  return {
    name: "room",
    match(pathname) {
      const m = PATH.exec(pathname);
      return m ? { room_id: decodeURIComponent(m[1]!) } : null;
    },
    async prepare(req, url, params) {
      const roomId = params.room_id!;
      const since = url.searchParams.get("since");
      if (since !== null && !isId("message", since)) throw new AppError("invalid_cursor", "since must be a message id (m_city_<ULID>)");
      const t = upgradeToken(req, url);
      const principal = t.query ? await o.verifier.verify(t.query) : await o.verifier.fromAuthorization(t.header);
      if (!ROOM_ID_RE.test(roomId)) throw new AppError("room_not_found", `room ${roomId} does not exist`);
      await o.city.requireRoom(roomId);
      return { route: "room", roomId, userId: principal?.userId ?? null, since, joined: false, typingAnnouncedAt: 0 };
    },
    open(ws) {
      o.hub.track(ws);
      enter(ws, ws.data.since);
    },
    message(ws, raw) {
      const frame = readFrame(ws, raw, o.maxFrameBytes);
      if (!frame) return;
      try {
        onFrame(ws, frame);
      } catch (err) {
        fail(ws, err);
      }
    },
    close(ws) {
      exit(ws, true);
      o.hub.untrack(ws);
    },
  };
}
