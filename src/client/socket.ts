/**
 * A WebSocket that comes back: reconnects with exponential backoff and full jitter, asks its owner
 * for the URL on every attempt (so the URL carries the latest `since` cursor and token), and keeps
 * the token fresh with `auth.refresh` before it expires. Runs in browsers and in Bun (the global
 * `WebSocket`); no server code.
 */

/** Where a reconnecting socket stands (seed 002's `connectionStatus`). */
export type ConnectionStatus = "connecting" | "open" | "closed" | "error";

/** Backoff between attempts (ms): attempt n waits a random time in [0, min(maxMs, baseMs·2ⁿ)]. */
export interface BackoffOptions {
  /** First ceiling, ms (default 500). */
  baseMs?: number;
  /** Highest ceiling, ms (default 30,000). */
  maxMs?: number;
}

/** Timers and randomness, replaceable so tests run on fake time. */
export interface ClientTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
  random(): number;
}

export const realTimers: ClientTimers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
  random: Math.random,
};

/**
 * The wait before reconnect attempt `attempt` (0 = the first retry), "full jitter": uniform in
 * [0, min(maxMs, baseMs·2^attempt)], so clients that lost one server do not all come back at once.
 * @returns milliseconds
 */
export function backoffDelay(attempt: number, o: BackoffOptions = {}, random: () => number = Math.random): number {
  const base = o.baseMs ?? 500;
  const max = o.maxMs ?? 30_000;
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** A JWT's claims, read without verifying (only to know when to refresh and whom a socket speaks for). */
function claims(token: string | null): Record<string, unknown> | null {
  const part = token?.split(".")[1];
  if (!part) return null;
  try {
    return JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="))) as Record<string, unknown>;
  } catch {
    return null;
  }
}

/** A JWT's `exp` in ms since the epoch, or null when it has none. */
export function tokenExpiry(token: string | null): number | null {
  const exp = claims(token)?.exp;
  return typeof exp === "number" ? exp * 1000 : null;
}

/** A JWT's `sub` (the user a socket speaks for), or null. */
export function tokenSubject(token: string | null): string | null {
  const sub = claims(token)?.sub;
  return typeof sub === "string" ? sub : null;
}

export interface ReconnectingSocketOptions<Out> {
  /** Builds the URL of the next attempt (called before each one). */
  url: () => Promise<string> | string;
  /** The current token, for `auth.refresh` (null: the socket has none). */
  token: () => Promise<string | null> | string | null;
  /** Each frame from the server, parsed. */
  onFrame: (frame: Out) => void;
  /** Each change of status. */
  onStatus?: (status: ConnectionStatus, detail?: { code?: number; reason?: string }) => void;
  /** Called when a socket opens (after the first and every reconnect). */
  onOpen?: () => void;
  /** Called when an attempt closes without ever opening (a refused upgrade, a server down). */
  onRefused?: () => void;
  backoff?: BackoffOptions;
  /** Refresh the token this long before it expires (ms, default 30,000). */
  refreshBeforeMs?: number;
  timers?: ClientTimers;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: typeof WebSocket;
}

const MAX_TIMER_MS = 2 ** 31 - 1;

/** Close codes after which reconnecting cannot help on its own (a refused token). */
const FATAL = new Set([1008]);

/**
 * One logical connection over as many WebSockets as it takes. Call `close()` to end it.
 */
export class ReconnectingSocket<Out = unknown, In = unknown> {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private retryTimer: unknown = null;
  private refreshTimer: unknown = null;
  private stopped = false;
  /** Bumped by every attempt: an attempt overtaken while it awaited its URL opens nothing. */
  private generation = 0;
  private _status: ConnectionStatus = "connecting";
  private readonly timers: ClientTimers;

  constructor(private readonly o: ReconnectingSocketOptions<Out>) {
    this.timers = o.timers ?? realTimers;
    void this.connect();
  }

  get status(): ConnectionStatus {
    return this._status;
  }

  /** Sends a frame if the socket is open. @returns whether it was sent */
  send(frame: In): boolean {
    if (this.ws?.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Drops the current socket and connects again at once (e.g. after a refetch). */
  reconnect(): void {
    if (this.stopped) return;
    this.attempt = 0;
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, "reconnect");
    this.timers.clearTimeout(this.retryTimer);
    void this.connect();
  }

  /** Ends the connection for good. */
  close(): void {
    this.stopped = true;
    this.timers.clearTimeout(this.retryTimer);
    this.timers.clearTimeout(this.refreshTimer);
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, "client closed");
    this.setStatus("closed");
  }

  private setStatus(s: ConnectionStatus, detail?: { code?: number; reason?: string }): void {
    if (this._status === s && !detail) return;
    this._status = s;
    this.o.onStatus?.(s, detail);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const generation = ++this.generation;
    this.setStatus("connecting");
    let url: string;
    try {
      url = await this.o.url();
    } catch {
      if (generation === this.generation) this.retry();
      return;
    }
    if (this.stopped || generation !== this.generation) return;
    const Ctor = this.o.WebSocket ?? globalThis.WebSocket;
    const ws = new Ctor(url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.attempt = 0;
      this.setStatus("open");
      void this.scheduleRefresh();
      this.o.onOpen?.();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws || typeof ev.data !== "string") return;
      let frame: Out;
      try {
        frame = JSON.parse(ev.data) as Out;
      } catch {
        return;
      }
      this.o.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.timers.clearTimeout(this.refreshTimer);
      if (this.stopped) return;
      this.setStatus("error", { code: ev.code, reason: ev.reason });
      if (!opened) this.o.onRefused?.();
      if (FATAL.has(ev.code)) return;
      this.retry();
    };
  }

  private retry(): void {
    if (this.stopped) return;
    const wait = backoffDelay(this.attempt++, this.o.backoff, this.timers.random);
    this.retryTimer = this.timers.setTimeout(() => void this.connect(), wait);
  }

  /** Sends `auth.refresh` with a fresh token shortly before the current one expires. */
  private async scheduleRefresh(): Promise<void> {
    this.timers.clearTimeout(this.refreshTimer);
    const token = await this.o.token();
    const exp = tokenExpiry(token);
    if (exp === null || this.stopped) return;
    const before = this.o.refreshBeforeMs ?? 30_000;
    const left = exp - this.timers.now();
    if (left <= 0) return; // the server closes with 4001; the reconnect asks for a new token
    // Well before expiry: `before` ahead of it. Close to it: half the time left, at least 1 s apart.
    // Timers hold at most 2³¹−1 ms (24.8 days); a longer wait is cut there and scheduled again.
    const wait = Math.min(MAX_TIMER_MS, left > before * 2 ? left - before : Math.max(1000, left / 2));
    this.refreshTimer = this.timers.setTimeout(async () => {
      if (exp - this.timers.now() > before) return void this.scheduleRefresh(); // woken early by the cap
      const fresh = await this.o.token();
      if (fresh && fresh !== token && this.ws?.readyState === 1) this.ws.send(JSON.stringify({ event: "auth.refresh", token: fresh }));
      void this.scheduleRefresh();
    }, wait);
  }
}
