/**
 * The one `Bun.serve`: WebSocket upgrades for the socket routes, everything else to the Elysia
 * app. Socket frames go straight from Bun to the route's handler (no framework layer on the
 * realtime path); HTTP goes through Elysia for schemas, errors and OpenAPI.
 */
import type { Server, ServerWebSocket } from "bun";
import type { App } from "./app.ts";
import type { Config } from "./config.ts";
import { AppError, CLOSE } from "./engine/errors.ts";
import type { Hub } from "./engine/hub.ts";
import type { SocketData, SocketRoute } from "./engine/sockets.ts";
import type { Logger } from "./log.ts";
import { errorResponse } from "./plugins/errors.ts";

export interface ServeOptions {
  config: Config;
  /** Listen port; overrides `config.port` (tests pass 0 for a free port). */
  port?: number;
  app: App;
  routes: SocketRoute<SocketData>[];
  /** Every open socket is tracked here (backpressure, token expiry, shutdown). */
  hub: Hub;
  log: Logger;
  /** True once shutdown began: new upgrades are refused with 503. */
  isShuttingDown(): boolean;
}

/** The path of a request URL without parsing the whole URL. */
function pathOf(url: string): string {
  const start = url.indexOf("/", url.indexOf("//") + 2);
  if (start < 0) return "/";
  const q = url.indexOf("?", start);
  return q < 0 ? url.slice(start) : url.slice(start, q);
}

export function serveCity(o: ServeOptions): Server<SocketData> {
  const { config, app, log } = o;
  const byName = new Map(o.routes.map((r) => [r.name, r]));
  const routeOf = (ws: ServerWebSocket<SocketData>) => byName.get(ws.data.route)!;

  const upgrade = async (req: Request, server: Server<SocketData>, route: SocketRoute<SocketData>, params: Record<string, string>) => {
    if (o.isShuttingDown()) return errorResponse(new AppError("shutting_down", "server is shutting down; reconnect to another instance"));
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response(JSON.stringify({ error: { code: "validation_failed", message: "this path takes WebSocket upgrades" } }), {
        status: 426,
        headers: { "content-type": "application/json", upgrade: "websocket" },
      });
    }
    try {
      const data = await route.prepare(req, new URL(req.url), params);
      if (server.upgrade(req, { data })) return undefined;
      return errorResponse(new AppError("validation_failed", "WebSocket upgrade failed"));
    } catch (err) {
      if (err instanceof AppError) return errorResponse(err);
      log.error("ws: upgrade failed", { route: route.name, err });
      return errorResponse(new AppError("internal", "internal error"));
    }
  };

  const safe = (what: string, ws: ServerWebSocket<SocketData>, fn: () => void) => {
    try {
      fn();
    } catch (err) {
      log.error(`ws: ${what} handler failed`, { route: ws.data.route, err });
      if (what !== "close") ws.close(CLOSE.internal, "internal error");
    }
  };

  return Bun.serve<SocketData>({
    hostname: config.host,
    port: o.port ?? config.port,
    // Bun refuses larger bodies itself (a bare 413); below that, a declared length over the limit
    // gets our JSON 413 in fetch(), and a chunked body is bounded by this hard cap.
    maxRequestBodySize: config.httpMaxBodyBytes * 4,
    fetch(req, server) {
      const path = pathOf(req.url);
      for (const route of o.routes) {
        const params = route.match(path);
        if (params) return upgrade(req, server, route, params);
      }
      const len = Number(req.headers.get("content-length") ?? 0);
      if (len > config.httpMaxBodyBytes) {
        return errorResponse(new AppError("payload_too_large", `request bodies are limited to ${config.httpMaxBodyBytes} bytes`));
      }
      return app.handle(req);
    },
    error(err) {
      log.error("http: unhandled error", { err });
      return errorResponse(new AppError("internal", "internal error"));
    },
    websocket: {
      maxPayloadLength: Math.max(config.wsMaxFrameBytes * 4, 131_072),
      backpressureLimit: config.wsMaxBufferedBytes * 2,
      closeOnBackpressureLimit: true,
      idleTimeout: config.wsIdleTimeoutSeconds,
      sendPings: true,
      perMessageDeflate: false,
      publishToSelf: false,
      open: (ws) => {
        o.hub.track(ws as ServerWebSocket<unknown>);
        safe("open", ws, () => routeOf(ws).open(ws));
      },
      message: (ws, raw) => safe("message", ws, () => routeOf(ws).message(ws, raw)),
      close: (ws, code, reason) => {
        safe("close", ws, () => routeOf(ws).close(ws, code, reason));
        o.hub.untrack(ws as ServerWebSocket<unknown>);
      },
    },
  });
}
