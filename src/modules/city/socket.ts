/**
 * Room socket `/ws/city/rooms/{room_id}` (seed 000 §5.1, SPEC "WebSockets").
 *
 * - Anyone may connect and read; `room.message.send` needs a token (`?token=` or `Authorization`).
 * - On open the socket is in the room: subscribed to its topic and, with a token, counted in
 *   `members_online`; a user's first socket in a room announces `room.join`, their last one
 *   leaving announces `room.leave` (only while the room has at most
 *   ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS users online: above that every join would go to everyone).
 *   `room.leave` / `room.join` frames step out and back in.
 * - `?since=<message id>` first replays what was missed, in order, then goes live (recovery).
 * - A message is acknowledged by its `room.message` echo, sent only after it is durable.
 * - Every bad frame gets an `error` frame; the socket stays open except for an oversize frame.
 */
import type { ServerWebSocket } from "bun";
import type { TokenVerifier } from "../../auth/tokens.ts";
import { AppError, CLOSE } from "../../engine/errors.ts";
import type { Hub } from "../../engine/hub.ts";
import type { LocalOccupancy } from "../../engine/occupancy.ts";
import { decodeFrame, encodeError, encodeRoomMembership, encodeRoomMessage, roomTopic, type ClientFrame } from "../../engine/protocol.ts";
import { frameTooLarge, upgradeToken, type SocketData, type SocketRoute } from "../../engine/sockets.ts";
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
}

export interface RoomSocketOptions {
  city: CityService;
  hub: Hub;
  occupancy: LocalOccupancy;
  verifier: TokenVerifier;
  log: Logger;
  maxFrameBytes: number;
  recoveryMax: number;
  /** Announce socket joins/leaves only while the room has at most this many users online. */
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

  /** Puts the socket in the room: count, announce, subscribe (after recovery when asked). */
  const enter = (ws: RoomSocket, since: string | null) => {
    const d = ws.data;
    d.joined = true;
    if (d.userId && o.occupancy.add(d.roomId, d.userId) && o.occupancy.count(d.roomId) <= o.membershipEventsMaxMembers) {
      o.hub.publish(roomTopic(d.roomId), { cursor: null, frame: encodeRoomMembership("room.join", d.roomId, d.userId) });
    }
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
    if (d.userId && o.occupancy.remove(d.roomId, d.userId) && o.occupancy.count(d.roomId) < o.membershipEventsMaxMembers) {
      o.hub.publish(roomTopic(d.roomId), { cursor: null, frame: encodeRoomMembership("room.leave", d.roomId, d.userId) });
    }
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
      case "room.leave":
        exit(ws, false);
        return;
      default:
        sendError(ws, "unknown_event", `unknown event "${f.event}"; expected room.join, room.leave or room.message.send`);
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
      return { route: "room", roomId, userId: principal?.userId ?? null, since, joined: false };
    },
    open(ws) {
      o.hub.track(ws);
      enter(ws, ws.data.since);
    },
    message(ws, raw) {
      if (frameTooLarge(raw, o.maxFrameBytes)) {
        sendError(ws, "frame_too_large", `frames are limited to ${o.maxFrameBytes} bytes`);
        ws.close(CLOSE.frameTooLarge, "frame too large");
        return;
      }
      const f = decodeFrame(raw);
      if (!f.ok) return sendError(ws, f.code, f.message);
      try {
        onFrame(ws, f.frame);
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
