/**
 * Presence socket `/ws/city/presence` (seed 000 §5.2, seed 003 §6; SPEC "WebSockets").
 *
 * - Needs a token (`?token=` or `Authorization`); `auth.refresh` replaces it before it expires
 *   (else the socket is closed with 4001).
 * - In: `{event:"presence.heartbeat", user_id}` every ~20 s; `user_id` must be the token's subject
 *   (otherwise an `error` frame `user_mismatch`, and the heartbeat is ignored).
 * - Out: `{type:"snapshot", rooms:[…]}` first, then `{type:"room.presence", …}` on count changes
 *   and `{event:"presence.update", user_id, status}` on transitions. `?events=counts` leaves out
 *   the per-user `presence.update` frames (for room lists that only show numbers, seed 003 §7).
 */
import type { ServerWebSocket } from "bun";
import type { TokenVerifier } from "../../auth/tokens.ts";
import { AppError, CLOSE } from "../../engine/errors.ts";
import type { PresenceTracker } from "../../engine/presence/presence.ts";
import { encodeError, PRESENCE_COUNTS_TOPIC, PRESENCE_USERS_TOPIC } from "../../engine/protocol.ts";
import { readFrame, refreshSocketToken, upgradePrincipal, type SocketData, type SocketRoute } from "../../engine/sockets.ts";
import type { Logger } from "../../log.ts";
import type { PresenceService } from "./service.ts";

export interface PresenceSocketData extends SocketData {
  route: "presence";
  userId: string;
  /** This user's heartbeat as compact JSON, the form clients send: taken without a parse. */
  beat: string;
  /** Receives per-user `presence.update` frames (not with `?events=counts`). */
  updates: boolean;
  /** Counted in the service's `presence.update` audience. */
  counted?: boolean;
  /** A heartbeat came on this socket already (the first is written early: the user may be coming online). */
  beaten?: boolean;
}

export interface PresenceSocketOptions {
  service: PresenceService;
  presence: PresenceTracker;
  verifier: TokenVerifier;
  log: Logger;
  maxFrameBytes: number;
}

const PATH = /^\/ws\/city\/presence\/?$/;
/** A heartbeat without `user_id` (the token's user), compact. */
const BARE_BEAT = JSON.stringify({ event: "presence.heartbeat" });

export function presenceSocketRoute(o: PresenceSocketOptions): SocketRoute<PresenceSocketData> {
  const sendError = (ws: ServerWebSocket<PresenceSocketData>, code: Parameters<typeof encodeError>[0], message: string) => ws.send(encodeError(code, message));
  const beat = (ws: ServerWebSocket<PresenceSocketData>) => {
    const first = !ws.data.beaten;
    ws.data.beaten = true;
    o.presence.heartbeat(ws.data.userId, first);
  };
  return {
    name: "presence",
    match: (pathname) => (PATH.test(pathname) ? {} : null),
    prepare(req, query) {
      const principal = upgradePrincipal(req, query, o.verifier);
      if (!principal) throw new AppError("unauthorized", "the presence socket needs a token (?token=… or Authorization)");
      const events = query.get("events") ?? "all";
      if (events !== "all" && events !== "counts") throw new AppError("validation_failed", "events must be all (default) or counts");
      const beat = JSON.stringify({ event: "presence.heartbeat", user_id: principal.userId });
      return { route: "presence", userId: principal.userId, expiresAt: principal.expiresAt, updates: events === "all", beat };
    },
    open(ws) {
      o.service.prepareSnapshot().then(
        (build) => {
          if (ws.readyState !== 1) return;
          // Same tick: nothing published between the snapshot's counts and the subscription.
          ws.send(build());
          ws.subscribe(PRESENCE_COUNTS_TOPIC);
          if (ws.data.updates) {
            ws.subscribe(PRESENCE_USERS_TOPIC);
            o.service.audienceChanged(1);
            ws.data.counted = true;
          }
        },
        (err) => {
          o.log.error("presence socket: snapshot failed", { err });
          sendError(ws, "store_unavailable", "could not read the room list; reconnect");
          ws.close(CLOSE.internal, "snapshot failed");
        },
      );
    },
    message(ws, raw) {
      // The common frame, byte for byte: the same heartbeat a parse would find, without the parse.
      if (raw === ws.data.beat || raw === BARE_BEAT) return beat(ws);
      const frame = readFrame(ws, raw, o.maxFrameBytes);
      if (!frame) return;
      if (frame.event === "auth.refresh") return refreshSocketToken(ws, frame, o.verifier);
      if (frame.event !== "presence.heartbeat") {
        return sendError(ws, "unknown_event", `unknown event "${frame.event}"; expected presence.heartbeat or auth.refresh`);
      }
      if (frame.user_id !== undefined && frame.user_id !== ws.data.userId) {
        return sendError(ws, "user_mismatch", `this socket speaks for ${ws.data.userId}; heartbeat for ${String(frame.user_id)} ignored`);
      }
      beat(ws);
    },
    close(ws) {
      if (ws.data.counted) o.service.audienceChanged(-1);
    },
  };
}
