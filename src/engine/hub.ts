/**
 * Hub: local topics and sockets over Bun's native pub/sub (`server.publish`), bridged to the other
 * instances through the {@link Broker} (SPEC "Realtime guarantees", ARCHITECTURE "engine/hub.ts").
 *
 * - A publication is a pre-serialised frame, published once to the local topic (Bun/uWS copies
 *   the bytes to each subscriber) and once to the broker subject `city.fanout.<topic>`; other
 *   instances publish what they receive to their own local topic.
 * - Recovery: a socket that reconnects with a cursor is not subscribed until its replay is sent;
 *   publications made meanwhile are buffered for it and sent after the replay, skipping any the
 *   replay already held, so it sees no gap and no duplicate.
 * - Backpressure: a socket whose send buffer stays above `maxBufferedBytes` for two sweeps is
 *   closed with 4008 (reconnect with `since`); above twice that Bun closes it at once. A slow
 *   socket therefore never holds a room back and never silently misses a message.
 */
import type { Server, ServerWebSocket } from "bun";
import type { Logger } from "../log.ts";
import type { Broker } from "./broker/broker.ts";
import { CLOSE } from "./errors.ts";

/** Broker subject prefix for fan-out between instances. */
export const FANOUT_SUBJECT = "city.fanout";

/** A frame with the cursor (message id) it carries, if any; cursors order a room's messages. */
export interface Publication {
  cursor: string | null;
  frame: string;
}

export interface HubOptions {
  broker: Broker;
  log: Logger;
  /** Send buffer per socket above which it is a slow consumer, bytes. */
  maxBufferedBytes: number;
  /** How often socket buffers are checked, ms. */
  sweepIntervalMs?: number;
  /** Most publications buffered for one socket during its recovery before it is closed. */
  maxRecoveryBuffer?: number;
}

interface Recovering {
  ws: ServerWebSocket<unknown>;
  buffer: Publication[];
  overflow: boolean;
}

type AnySocket = ServerWebSocket<unknown>;

export class Hub {
  private server: Server<unknown> | null = null;
  private readonly sockets = new Set<AnySocket>();
  private readonly recovering = new Map<string, Set<Recovering>>();
  /** Sockets seen over the buffer cap: consecutive sweeps over it, or ≥ 100 once closing. */
  private readonly strikes = new Map<AnySocket, number>();
  private sweepTimer: ReturnType<typeof setInterval> | null = null;
  private unsubscribeBroker: (() => void) | null = null;
  private readonly fanoutPrefix = FANOUT_SUBJECT + ".";

  constructor(private readonly opts: HubOptions) {}

  /** Binds the hub to the running server whose topics it publishes to. */
  attach(server: Server<unknown>): void {
    this.server = server;
  }

  /** Starts the broker bridge and the backpressure sweep. */
  start(): void {
    this.unsubscribeBroker = this.opts.broker.subscribe(`${FANOUT_SUBJECT}.>`, (subject, payload) => {
      const nl = payload.indexOf("\n");
      if (nl < 0) return;
      const cursor = nl === 0 ? null : payload.slice(0, nl);
      this.publishLocal(subject.slice(this.fanoutPrefix.length), { cursor, frame: payload.slice(nl + 1) });
    });
    this.sweepTimer = setInterval(() => this.sweep(), this.opts.sweepIntervalMs ?? 1000);
    this.sweepTimer.unref?.();
  }

  /** Publishes to local subscribers of `topic` and to every other instance. */
  publish(topic: string, pub: Publication): void {
    this.publishLocal(topic, pub);
    this.opts.broker.publish(this.fanoutPrefix + topic, (pub.cursor ?? "") + "\n" + pub.frame);
  }

  /** Publishes to this instance's subscribers of `topic` only (and to sockets recovering on it). */
  publishLocal(topic: string, pub: Publication): void {
    this.server?.publish(topic, pub.frame, false);
    const rec = this.recovering.get(topic);
    if (rec) for (const r of rec) this.bufferFor(r, pub);
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
    for (const [topic, set] of this.recovering) {
      for (const r of set) if (r.ws === ws) set.delete(r);
      if (set.size === 0) this.recovering.delete(topic);
    }
  }

  /** Open sockets on this instance. */
  socketCount(): number {
    return this.sockets.size;
  }

  /**
   * Subscribes `ws` to `topic` after sending it what it missed.
   * @param load reads the missed publications (oldest first) from the store
   * @returns how many publications were replayed, or `null` when the socket closed meanwhile
   * @throws whatever `load` throws (the socket is then not subscribed)
   */
  async subscribeWithRecovery(ws: AnySocket, topic: string, load: () => Promise<Publication[]>): Promise<number | null> {
    const entry: Recovering = { ws, buffer: [], overflow: false };
    let set = this.recovering.get(topic);
    if (!set) this.recovering.set(topic, (set = new Set()));
    set.add(entry);
    let replay: Publication[];
    try {
      replay = await load();
    } finally {
      set.delete(entry);
      if (set.size === 0 && this.recovering.get(topic) === set) this.recovering.delete(topic);
    }
    if (ws.readyState !== 1 || !this.sockets.has(ws)) return null;
    if (entry.overflow) {
      ws.close(CLOSE.slowConsumer, "too many messages during recovery; reconnect with since");
      return null;
    }
    let last = "";
    for (const p of replay) {
      ws.send(p.frame);
      if (p.cursor) last = p.cursor;
    }
    // Everything published while the store was read; skip what the replay already carried.
    for (const p of entry.buffer) if (p.cursor === null || p.cursor > last) ws.send(p.frame);
    ws.subscribe(topic);
    return replay.length;
  }

  /** Closes every tracked socket with `code` (shutdown uses 1001). */
  closeAll(code: number, reason: string): void {
    for (const ws of this.sockets) ws.close(code, reason);
  }

  /** Stops the sweep and the broker bridge. */
  close(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = null;
    this.unsubscribeBroker?.();
    this.unsubscribeBroker = null;
  }

  /** One backpressure pass over every socket; public for tests. */
  sweep(): void {
    const cap = this.opts.maxBufferedBytes;
    for (const ws of this.sockets) {
      const over = ws.getBufferedAmount() > cap;
      const s = this.strikes.get(ws);
      if (s !== undefined && s >= 100) {
        // Closing: if the client does not read its close frame within ~5 sweeps, cut it.
        if (s >= 105) ws.terminate();
        else this.strikes.set(ws, s + 1);
      } else if (!over) {
        if (s !== undefined) this.strikes.delete(ws);
      } else if ((s ?? 0) + 1 >= 2) {
        this.opts.log.info("hub: closing slow consumer", { buffered: ws.getBufferedAmount() });
        this.strikes.set(ws, 100);
        ws.close(CLOSE.slowConsumer, "slow consumer; reconnect with since");
      } else {
        this.strikes.set(ws, (s ?? 0) + 1);
      }
    }
  }

  private bufferFor(r: Recovering, pub: Publication): void {
    if (r.overflow) return;
    if (r.buffer.length >= (this.opts.maxRecoveryBuffer ?? 10_000)) {
      r.overflow = true;
      r.buffer = [];
      return;
    }
    r.buffer.push(pub);
  }
}
