/**
 * The Living Map stream `/living-map/stream` (seed 004 §4.6, SPEC "WebSockets").
 *
 * - Needs a token (`?token=` or `Authorization`) unless LIVING_MAP_PUBLIC is on; at most
 *   LIVING_MAP_SOCKETS_PER_USER streams per user on an instance (429 `rate_limited` beyond).
 * - Out: `{kind:"snapshot", …}` first, then `{kind:"event", id, event_type, timestamp, payload}`
 *   per event, each serialised once and published on one Bun topic.
 * - `?since=<event id>`: first the events missed after it (a fresh snapshot when too many were),
 *   then live ones; an id the map does not know refuses the upgrade with 400 `invalid_cursor`.
 * - In: `auth.refresh` only; anything else gets an `error` frame. A token that expires closes
 *   the stream with 4001.
 */
import type { ServerWebSocket } from "bun";
import type { TokenVerifier } from "../../auth/tokens.ts";
import { AppError, CLOSE } from "../../engine/errors.ts";
import { encodeError } from "../../engine/protocol.ts";
import { readFrame, refreshSocketToken, upgradePrincipal, type SocketData, type SocketRoute } from "../../engine/sockets.ts";
import type { Logger } from "../../log.ts";
import type { LivingMapService } from "./service.ts";

export interface LivingMapSocketData extends SocketData {
  route: "living-map";
  userId: string | null;
  since: string | null;
  /** Counted in its user's stream limit. */
  counted: boolean;
}

export interface LivingMapSocketOptions {
  map: LivingMapService;
  verifier: TokenVerifier;
  log: Logger;
  isPublic: boolean;
  socketsPerUser: number;
  maxFrameBytes: number;
}

const PATH = /^\/living-map\/stream\/?$/;

export function livingMapSocketRoute(o: LivingMapSocketOptions): SocketRoute<LivingMapSocketData> {
  const perUser = new Map<string, number>();
  return {
    name: "living-map",
    match: (pathname) => (PATH.test(pathname) ? {} : null),
    prepare(req, query) {
      const principal = upgradePrincipal(req, query, o.verifier);
      if (!principal && !o.isPublic) throw new AppError("unauthorized", "the living map stream needs a token (?token=… or Authorization)");
      if (principal && (perUser.get(principal.userId) ?? 0) >= o.socketsPerUser) {
        throw new AppError("rate_limited", `at most ${o.socketsPerUser} living map streams per user; close one first`, 1);
      }
      const since = query.get("since");
      const data: LivingMapSocketData = { route: "living-map", userId: principal?.userId ?? null, expiresAt: principal?.expiresAt ?? null, since, counted: false };
      if (since === null) return data;
      return o.map.knows(since).then((known) => {
        if (!known) throw new AppError("invalid_cursor", `since: no event ${since} on this map (too old, or never seen)`);
        return data;
      });
    },
    open(ws) {
      const d = ws.data;
      if (d.userId) {
        perUser.set(d.userId, (perUser.get(d.userId) ?? 0) + 1);
        d.counted = true;
      }
      o.map.join(ws as ServerWebSocket<unknown>, d.since).catch((err) => {
        if (ws.readyState !== 1) return;
        const e = err instanceof AppError ? err : new AppError("internal", "internal error");
        if (!(err instanceof AppError)) o.log.error("living map stream: join failed", { err });
        ws.send(encodeError(e.code, e.message));
        ws.close(CLOSE.internal, "could not start the stream; reconnect");
      });
    },
    message(ws, raw) {
      const frame = readFrame(ws, raw, o.maxFrameBytes);
      if (!frame) return;
      if (frame.event === "auth.refresh") return refreshSocketToken(ws, frame, o.verifier);
      ws.send(encodeError("unknown_event", `unknown event "${frame.event}"; the stream only takes auth.refresh`));
    },
    close(ws) {
      const d = ws.data;
      if (!d.counted || !d.userId) return;
      const n = (perUser.get(d.userId) ?? 1) - 1;
      if (n > 0) perUser.set(d.userId, n);
      else perUser.delete(d.userId);
    },
  };
}
