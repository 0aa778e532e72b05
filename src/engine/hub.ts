/**
 * Hub: this instance's sockets and local topics over Bun's native pub/sub (`server.publish`),
 * ARCHITECTURE "engine/hub.ts". It never talks to other instances: room streams
 * (`streams.ts`) bridge rooms through the broker and deliver here.
 *
 * - A publication is a pre-serialised frame, handed once to Bun for every local subscriber of the
 *   topic (uWS copies the bytes to each), never serialised per subscriber.
 * - Backpressure (SPEC "Realtime guarantees"): a socket whose send buffer stays above
 *   `maxBufferedBytes` for two sweeps is closed with 4008 (reconnect with `since`); above twice
 *   that Bun closes it at once. A slow socket never holds a room back.
 * - Socket auth over time: a socket whose token expires (`expiresAt`, epoch ms) is closed with
 *   4001 `token_expired` by the next sweep, unless an `auth.refresh` frame moved its expiry.
 */
import type { Server, ServerWebSocket } from "bun";
import { systemClock, systemScheduler, type Clock, type Scheduler, type Timer } from "../clock.ts";
import type { Logger } from "../log.ts";
import { CLOSE } from "./errors.ts";

export interface HubOptions {
  log: Logger;
  /** Send buffer per socket above which it is a slow consumer, bytes. */
  maxBufferedBytes: number;
  /** How often socket buffers and token expiries are checked, ms. */
  sweepIntervalMs?: number;
  clock?: Clock;
  scheduler?: Scheduler;
}

/** What the hub reads from a socket's data: when its token expires (epoch ms), if it has one. */
export interface HubSocketData {
  expiresAt?: number | null;
}

type AnySocket = ServerWebSocket<unknown>;

export class Hub {
  private server: Server<unknown> | null = null;
  private readonly sockets = new Set<AnySocket>();
  /** Sockets seen over the buffer cap: consecutive sweeps over it, or ≥ 100 once closing. */
  private readonly strikes = new Map<AnySocket, number>();
  private sweepTimer: Timer | null = null;
  private readonly clock: Clock;
  private readonly scheduler: Scheduler;
  /** Sockets closed by the hub, by reason; for /metrics. */
  readonly stats = { slowConsumersClosed: 0, tokensExpired: 0 };

  constructor(private readonly opts: HubOptions) {
    this.clock = opts.clock ?? systemClock;
    this.scheduler = opts.scheduler ?? systemScheduler;
  }

  /** Binds the hub to the running server whose topics it publishes to. */
  attach(server: Server<unknown>): void {
    this.server = server;
  }

  /** Starts the backpressure and token-expiry sweep. */
  start(): void {
    this.sweepTimer = this.scheduler.every(this.opts.sweepIntervalMs ?? 1000, () => this.sweep());
  }

  /** Publishes a pre-serialised frame to this instance's subscribers of `topic`. */
  publishLocal(topic: string, frame: string): void {
    this.server?.publish(topic, frame, false);
  }

  /** Local subscribers of a topic (Bun walks its topic tree: not for hot paths). */
  subscriberCount(topic: string): number {
    return this.server?.subscriberCount(topic) ?? 0;
  }

  /** Registers an open socket for the sweep and for {@link closeAll}. */
  track(ws: AnySocket): void {
    this.sockets.add(ws);
  }

  /** Forgets a closed socket. */
  untrack(ws: AnySocket): void {
    this.sockets.delete(ws);
    this.strikes.delete(ws);
  }

  /** Open sockets on this instance. */
  socketCount(): number {
    return this.sockets.size;
  }

  /** True while `ws` is open and tracked (a recovery that finishes late checks this). */
  isOpen(ws: AnySocket): boolean {
    return ws.readyState === 1 && this.sockets.has(ws);
  }

  /** Closes every tracked socket with `code` (shutdown uses 1001). */
  closeAll(code: number, reason: string): void {
    for (const ws of this.sockets) ws.close(code, reason);
  }

  /** Stops the sweep. */
  close(): void {
    this.sweepTimer?.cancel();
    this.sweepTimer = null;
  }

  /** One backpressure and token-expiry pass over every socket; public for tests. */
  sweep(): void {
    const cap = this.opts.maxBufferedBytes;
    const now = this.clock.now();
    for (const ws of this.sockets) {
      const s = this.strikes.get(ws);
      if (s !== undefined && s >= 100) {
        // Closing: if the client does not read its close frame within ~5 sweeps, cut it.
        if (s >= 105) ws.terminate();
        else this.strikes.set(ws, s + 1);
        continue;
      }
      const expiresAt = (ws.data as HubSocketData | undefined)?.expiresAt;
      if (expiresAt != null && expiresAt <= now) {
        this.stats.tokensExpired++;
        this.strikes.set(ws, 100);
        ws.close(CLOSE.tokenExpired, "token_expired: reconnect with a fresh token, or send auth.refresh before exp");
        continue;
      }
      const over = ws.getBufferedAmount() > cap;
      if (!over) {
        if (s !== undefined) this.strikes.delete(ws);
      } else if ((s ?? 0) + 1 >= 2) {
        this.opts.log.info("hub: closing slow consumer", { buffered: ws.getBufferedAmount() });
        this.stats.slowConsumersClosed++;
        this.strikes.set(ws, 100);
        ws.close(CLOSE.slowConsumer, "slow consumer; reconnect with since");
      } else {
        this.strikes.set(ws, (s ?? 0) + 1);
      }
    }
  }
}
