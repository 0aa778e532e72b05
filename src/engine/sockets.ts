/**
 * Socket routes: how a feature plugs a WebSocket endpoint into the one `Bun.serve` websocket
 * handler. The server matches the path, awaits `prepare` (auth, existence checks; an AppError
 * becomes an HTTP error response and no upgrade happens), upgrades with the returned data, and
 * then dispatches every socket event to the route that opened the socket.
 */
import type { ServerWebSocket } from "bun";
import type { Principal, TokenVerifier } from "../auth/tokens.ts";
import { AppError, CLOSE } from "./errors.ts";
import { decodeFrame, encodeAuthRefreshed, encodeError, type ClientFrame } from "./protocol.ts";

/** Data every socket carries: which route owns it, and who it speaks for until when. */
export interface SocketData {
  route: string;
  /** The token's user; `null` for an anonymous (read-only) socket. */
  userId?: string | null;
  /** When the socket's token stops being honoured (epoch ms); the hub closes it with 4001 then. */
  expiresAt?: number | null;
}

export interface SocketRoute<D extends SocketData> {
  /** Unique route name, stored in `ws.data.route`. */
  readonly name: string;
  /** Path parameters when `pathname` is this route's, else `null`. */
  match(pathname: string): Record<string, string> | null;
  /**
   * Checks the upgrade request. Returns the data itself when it can decide without waiting (a
   * token verifies synchronously, a known room, a seq cursor): the server then upgrades in the
   * same call, as a bare `Bun.serve` does, without a promise and a deferred response per
   * connection. A promise only when it must ask the store (an unknown room, a message-id cursor).
   * @returns the socket's data, or a promise of it
   * @throws AppError (mapped to an HTTP error response, no upgrade), thrown or as the rejection
   */
  prepare(req: Request, query: QueryParams, params: Record<string, string>): D | Promise<D>;
  open(ws: ServerWebSocket<D>): void;
  message(ws: ServerWebSocket<D>, raw: string | Buffer): void;
  close(ws: ServerWebSocket<D>, code: number, reason: string): void;
}

/** A string frame's size in UTF-8 bytes, computed only when it could exceed `limit`. */
export function frameTooLarge(raw: string | Buffer, limit: number): boolean {
  if (typeof raw !== "string") return raw.byteLength > limit;
  if (raw.length * 3 <= limit) return false;
  return Buffer.byteLength(raw, "utf8") > limit;
}

/** The query parameters of an upgrade request: what `URLSearchParams` answers `get` with. */
export interface QueryParams {
  /** The first value of `name`, decoded; `null` when absent. */
  get(name: string): string | null;
}

/**
 * The query of a request URL, read in place without building a `URL`: a fresh server runs its
 * first thousands of connects in the interpreter and the baseline JIT, where every operation on
 * the connect path costs (bench/README.md, "2026-12-02: a fresh server's connect path"). A value
 * with `%` or `+` (anything to decode) is read by `URLSearchParams`, so every answer is the same
 * as `new URL(url).searchParams.get(name)`.
 * @param url an absolute request URL (`req.url`)
 */
export function queryOf(url: string): QueryParams {
  return { get: (name) => queryParam(url, name) };
}

function queryParam(url: string, name: string): string | null {
  const q = url.indexOf("?");
  if (q < 0) return null;
  let end = url.indexOf("#", q);
  if (end < 0) end = url.length;
  // the first `name=` (or a bare `name`) that starts a pair
  for (let at = q; at < end; ) {
    const from = at + 1;
    let next = url.indexOf("&", from);
    if (next < 0 || next > end) next = end;
    const pair = url.slice(from, next);
    if (pair.includes("%") || pair.includes("+")) return new URLSearchParams(url.slice(q + 1, end)).get(name);
    if (pair === name) return "";
    if (pair.length > name.length && pair.startsWith(name) && pair.charCodeAt(name.length) === 61 /* = */) return pair.slice(name.length + 1);
    at = next;
  }
  return null;
}

/**
 * Who an upgrade speaks for: the bearer token of `?token=` (browsers cannot set headers on a
 * WebSocket), else of the `Authorization` header (read only then).
 * @returns the principal, or `null` for an anonymous upgrade (neither given)
 * @throws AppError `unauthorized` for a token that does not verify
 */
export function upgradePrincipal(req: Request, query: QueryParams, verifier: TokenVerifier): Principal | null {
  const token = query.get("token");
  return token ? verifier.verify(token) : verifier.fromAuthorization(req.headers.get("authorization"));
}

/**
 * Reads a client frame. An oversize frame gets `frame_too_large` and the socket is closed with
 * 1009; a frame that is not a JSON object with an `event` gets an `error` frame (socket stays open).
 * @returns the frame, or `null` when it was refused
 */
export function readFrame(ws: ServerWebSocket<unknown>, raw: string | Buffer, maxBytes: number): ClientFrame | null {
  if (frameTooLarge(raw, maxBytes)) {
    ws.send(encodeError("frame_too_large", `frames are limited to ${maxBytes} bytes`));
    ws.close(CLOSE.frameTooLarge, "frame too large");
    return null;
  }
  const f = decodeFrame(raw);
  if (!f.ok) {
    ws.send(encodeError(f.code, f.message));
    return null;
  }
  return f.frame;
}

/**
 * `{event:"auth.refresh", token}` (SPEC "WebSockets"): replaces the socket's token so it outlives
 * the old one's `exp`, answered by `{event:"auth.refreshed", expires_at}` (ISO time the new token
 * stops being honoured). The new token must name the same user; a refused token gets an `error`
 * frame and changes nothing. An anonymous socket cannot become a user's this way (reconnect).
 * Answers in the same call; errors go to the socket, never thrown.
 */
export function refreshSocketToken(ws: ServerWebSocket<SocketData>, frame: ClientFrame, verifier: TokenVerifier): void {
  const d = ws.data;
  try {
    if (typeof frame.token !== "string" || frame.token === "") throw new AppError("validation_failed", "auth.refresh needs a string `token`");
    if (!d.userId) throw new AppError("unauthorized", "this socket is anonymous; reconnect with ?token= to act as a user");
    const p = verifier.verify(frame.token);
    if (p.userId !== d.userId) throw new AppError("unauthorized", `the new token is for ${p.userId}; this socket speaks for ${d.userId}`);
    d.expiresAt = p.expiresAt;
    if (ws.readyState === 1) ws.send(encodeAuthRefreshed(p.expiresAt));
  } catch (err) {
    if (ws.readyState !== 1) return;
    if (err instanceof AppError) ws.send(encodeError(err.code, err.message));
    else ws.send(encodeError("internal", "internal error"));
  }
}
