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
import { queryOf, type SocketData, type SocketRoute } from "./engine/sockets.ts";
import type { Logger } from "./log.ts";
import { errorResponse } from "./plugins/errors.ts";
import type { webRoutes } from "./web/routes.ts";

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
  /** Browser routes (the page, the OpenAPI UI, local sign-in), matched before the API. */
  web?: ReturnType<typeof webRoutes>;
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

  const notAnUpgrade = () =>
    new Response(JSON.stringify({ error: { code: "validation_failed", message: "this path takes WebSocket upgrades" } }), {
      status: 426,
      headers: { "content-type": "application/json", upgrade: "websocket" },
    });
  const shuttingDown = () => errorResponse(new AppError("shutting_down", "server is shutting down; reconnect to another instance"));
  const isUpgrade = (req: Request) => req.headers.get("upgrade")?.toLowerCase() === "websocket";
  /** A refused upgrade: a plain request to a socket path hears 426 first, whatever else is wrong with it. */
  const refused = (req: Request, route: SocketRoute<SocketData>, err: unknown): Response => {
    if (!isUpgrade(req)) return notAnUpgrade();
    if (err instanceof AppError) return errorResponse(err);
    log.error("ws: upgrade failed", { route: route.name, err });
    return errorResponse(new AppError("internal", "internal error"));
  };
  const finish = (req: Request, server: Server<SocketData>, data: SocketData): Response | undefined => {
    if (server.upgrade(req, { data })) return undefined;
    return isUpgrade(req) ? errorResponse(new AppError("validation_failed", "WebSocket upgrade failed")) : notAnUpgrade();
  };

  /**
   * Upgrades in the same call when the route decides synchronously (the usual connect: no promise,
   * no deferred response, no URL or Headers object built, as a bare Bun.serve does); otherwise once
   * its promise settles. Routes' checks have no side effects, so a plain request (not an upgrade)
   * is told 426 after them: the headers are read only on that path.
   */
  const upgrade = (req: Request, server: Server<SocketData>, route: SocketRoute<SocketData>, params: Record<string, string>): Response | undefined | Promise<Response | undefined> => {
    if (o.isShuttingDown()) return shuttingDown();
    let prepared: SocketData | Promise<SocketData>;
    try {
      prepared = route.prepare(req, queryOf(req.url), params);
    } catch (err) {
      return refused(req, route, err);
    }
    if (!(prepared instanceof Promise)) return finish(req, server, prepared);
    return prepared.then(
      // Shutdown may have begun while the route asked the store.
      (data) => (o.isShuttingDown() ? shuttingDown() : finish(req, server, data)),
      (err) => refused(req, route, err),
    );
  };

  /** A route handler threw: logged, and the socket closed with 1011 (never the process). */
  const failed = (what: "open" | "message" | "close", ws: ServerWebSocket<SocketData>, err: unknown) => {
    log.error(`ws: ${what} handler failed`, { route: ws.data.route, err });
    if (what !== "close") ws.close(CLOSE.internal, "internal error");
  };

  /** Elysia finds the path after the 11th character; a host shorter than 4 characters (`Host: app`) would lose it. */
  const elysiaSafe = (req: Request, pathStart: number): Request => {
    if (pathStart >= 11) return req;
    const url = req.url;
    return new Request(`http://localhost${url.slice(pathStart)}`, req);
  };

  const tooLarge = () => errorResponse(new AppError("payload_too_large", `request bodies are limited to ${config.httpMaxBodyBytes} bytes`));

  /**
   * Reads a body sent without a length (chunked) up to HTTP_MAX_BODY_BYTES; one byte more and the
   * request is refused, the rest never read.
   * @returns the request with its body buffered, or `null` when the body is too large
   */
  const boundedBody = async (req: Request): Promise<Request | null> => {
    const reader = req.body!.getReader();
    const chunks: Uint8Array[] = [];
    let size = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > config.httpMaxBodyBytes) {
        void reader.cancel().catch(() => {});
        return null;
      }
      chunks.push(value);
    }
    return new Request(req.url, { method: req.method, headers: req.headers, body: Buffer.concat(chunks) });
  };

  /** Every request that is not a socket upgrade: the body limit, then the Elysia app. */
  const http = async (req: Request, pathStart: number): Promise<Response> => {
    const declared = req.headers.get("content-length");
    if (declared !== null) {
      if (Number(declared) > config.httpMaxBodyBytes) return tooLarge();
    } else if (req.body && req.method !== "GET" && req.method !== "HEAD") {
      const buffered = await boundedBody(req);
      if (!buffered) return tooLarge();
      req = buffered;
    }
    return app.handle(elysiaSafe(req, pathStart));
  };

  return Bun.serve<SocketData>({
    hostname: config.host,
    port: o.port ?? config.port,
    // The page is bundled once (minified, cached); no hot reload or dev overlay in any run.
    development: false,
    routes: o.web ?? {},
    // The limit is ours (HTTP_MAX_BODY_BYTES, answered in the error shape): a declared length is
    // checked before a byte is read, a chunked body is read up to the limit. Bun's own cap sits
    // far above so it never answers first with a bare 413.
    maxRequestBodySize: 1 << 30,
    fetch(req, server) {
      const url = req.url;
      const start = url.indexOf("/", url.indexOf("//") + 2);
      const path = pathOf(url);
      for (const route of o.routes) {
        const params = route.match(path);
        if (params) return upgrade(req, server, route, params);
      }
      return http(req, start);
    },
    error(err) {
      log.error("http: unhandled error", { err });
      return errorResponse(new AppError("internal", "internal error"));
    },
    websocket: {
      // Frames up to this size reach the route, which answers one over WS_MAX_FRAME_BYTES with a
      // `frame_too_large` frame before closing 1009; only larger ones are cut by Bun (1009, no frame).
      maxPayloadLength: Math.max(config.wsMaxFrameBytes * 4, 1 << 20),
      // Slow consumers are the hub's to close, with 4008 and the reason, on its sweep (every 250 ms,
      // at once past 8× the cap); Bun's own limit (a cut with no close frame) sits far above: 64× the
      // cap and at least 64 MiB, which a loopback burst does not fill between two sweeps (a small cap
      // times 64 alone it did: 4 MiB at a 64 KiB cap, and the socket was cut without its reason).
      backpressureLimit: Math.max(config.wsMaxBufferedBytes * 64, 64 << 20),
      closeOnBackpressureLimit: true,
      idleTimeout: config.wsIdleTimeoutSeconds,
      sendPings: true,
      perMessageDeflate: false,
      publishToSelf: false,
      open: (ws) => {
        o.hub.track(ws as ServerWebSocket<unknown>);
        try {
          routeOf(ws).open(ws);
        } catch (err) {
          failed("open", ws, err);
        }
      },
      // No closure per frame: a heartbeat storm is 100,000 of these a second.
      message: (ws, raw) => {
        try {
          routeOf(ws).message(ws, raw);
        } catch (err) {
          failed("message", ws, err);
        }
      },
      drain: (ws) => o.hub.drained(ws as ServerWebSocket<unknown>),
      close: (ws, code, reason) => {
        try {
          routeOf(ws).close(ws, code, reason);
        } catch (err) {
          failed("close", ws, err);
        }
        o.hub.untrack(ws as ServerWebSocket<unknown>);
      },
    },
  });
}
