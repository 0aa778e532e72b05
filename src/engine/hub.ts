/**
 * Hub: this instance's sockets and local topics over Bun's native pub/sub (`server.publish`),
 * ARCHITECTURE "engine/hub.ts". It never talks to other instances: room streams
 * (`streams.ts`) bridge rooms through the broker and deliver here.
 *
 * - A publication is a pre-serialised frame, handed once to Bun for every local subscriber of the
 *   topic (uWS copies the bytes to each), never serialised per subscriber.
 * - Backpressure (SPEC "Realtime guarantees"): a socket whose send buffer stays above
 *   `maxBufferedBytes` for two sweeps in a row (a sweep every 250 ms), or is found above eight
 *   times it, is closed with 4008 and the reason (reconnect with `since`), and taken off its topics
 *   so its buffer stops growing while the client reads up to the close frame. Bun's own cut (no
 *   close frame) sits at 64 times the cap and at least 64 MiB, out of reach between two sweeps.
 *   A slow socket never holds a room back. Whoever sends a lot to one socket (a recovery replay) paces itself with
 *   {@link Hub.writable}.
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
  /** How often socket buffers and token expiries are checked, ms (default 250). */
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
  /** Senders waiting for a socket's buffer to drain. */
  private readonly drainWaiters = new Map<AnySocket, (() => void)[]>();
  private readonly clock: Clock;
  private readonly scheduler: Scheduler;
  /** Sockets closed by the hub, by reason (for /metrics), and sweeps run (a test waits on them instead of a sleep). */
  readonly stats = { slowConsumersClosed: 0, tokensExpired: 0, sweeps: 0 };

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
    this.sweepTimer = this.scheduler.every(this.opts.sweepIntervalMs ?? 250, () => this.sweep());
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

  /** Forgets a closed socket (and releases whoever waited for it to drain). */
  untrack(ws: AnySocket): void {
    this.sockets.delete(ws);
    this.strikes.delete(ws);
    this.drained(ws);
  }

  /**
   * Resolves when `ws` can take more without nearing the slow-consumer cap: at once while its
   * buffer is under half the cap, else when Bun reports it drained (or it closed).
   */
  writable(ws: AnySocket): Promise<void> {
    if (ws.readyState !== 1 || ws.getBufferedAmount() < this.opts.maxBufferedBytes / 2) return Promise.resolve();
    return new Promise((resolve) => {
      let list = this.drainWaiters.get(ws);
      if (!list) this.drainWaiters.set(ws, (list = []));
      list.push(resolve);
    });
  }

  /** Bun's `drain` for `ws`: its send buffer emptied enough to write again. */
  drained(ws: AnySocket): void {
    const list = this.drainWaiters.get(ws);
    if (!list) return;
    this.drainWaiters.delete(ws);
    for (const r of list) r();
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
    this.stats.sweeps++;
    const cap = this.opts.maxBufferedBytes;
    const now = this.clock.now();
    for (const ws of this.sockets) {
      const s = this.strikes.get(ws);
      if (s !== undefined && s >= 100) {
        // Closing: if the client does not read up to its close frame within ~20 sweeps, cut it.
        if (s >= 120) ws.terminate();
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
      const buffered = ws.getBufferedAmount();
      const over = buffered > cap;
      if (!over) {
        if (s !== undefined) this.strikes.delete(ws);
      } else if ((s ?? 0) + 1 >= 2 || buffered > cap * 8) {
        this.opts.log.info("hub: closing slow consumer", { buffered });
        this.stats.slowConsumersClosed++;
        this.strikes.set(ws, 100);
        for (const topic of ws.subscriptions) ws.unsubscribe(topic);
        ws.close(CLOSE.slowConsumer, "slow consumer; reconnect with since");
      } else {
        this.strikes.set(ws, (s ?? 0) + 1);
      }
    }
  }
}
