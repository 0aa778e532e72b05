/**
 * NatsBroker: the production broker over NATS core pub/sub (`nats` package).
 *
 * - Outbound: publishes and requests go out on this thread's connection (a publish is one
 *   buffered write), each publication carrying this instance's origin header.
 * - Inbound: every subscription lives in the bus ({@link BusCore}): by default in the bus worker
 *   thread (`src/workers/bus.worker.ts`), which hands this thread batches; with `busWorker: false`
 *   on this thread. The bus drops this instance's own publications (the contract: no echo) unless a
 *   subscription asks for them.
 * - Both connections reconnect forever; while the inbound side is cut off, publications from
 *   other instances are lost (at most once) and {@link onStatus} says `down`, then `up`, so the
 *   room streams read what they missed from the store.
 * - The worker beats every second; one silent for 5 s (dead or stalled) is replaced, its
 *   subscriptions made again, and the gap reported like an outage.
 */
import { connectFailure } from "../../startup.ts";
import { connect, ErrorCode, Events, headers, type MsgHdrs, type NatsConnection, type NatsError } from "nats";
import type { Logger } from "../../log.ts";
import { BrokerRequestError, type Broker, type EventStream, type StreamEvent, type SubscribeOptions } from "./broker.ts";
import { BusCore, FLUSH_MARK, ORIGIN_HEADER, type BusCommand, type BusEvent } from "./bus-core.ts";
import { workerEntry } from "../../workers/entry.ts";

export interface NatsBrokerOptions {
  /** One URL or several separated by commas. */
  url: string;
  /** Prepended (with a dot) to every subject on the wire. */
  subjectPrefix?: string;
  /** Shown in the server's connection list. */
  name?: string;
  log: Logger;
  /** How long the first connection may take, ms. */
  connectTimeoutMs?: number;
  /** Inbound subscriptions in the bus worker thread (default) or on this thread. */
  busWorker?: boolean;
  /** Most publications the bus holds for this thread before it drops and reports an overflow. */
  maxBusQueue?: number;
  /** A bus worker silent this long (it beats every second) is replaced, ms. Default 5000. */
  beatTimeoutMs?: number;
}

/** The bus worker's entry (an entry point of `bun run build`). */
const WORKER_SPECIFIER = workerEntry("workers/bus.worker.ts");

interface Sub {
  pattern: string;
  echo: boolean;
  handler: (subject: string, payload: string) => void;
}

/** The inbound side, in a worker or on this thread. */
interface Inbound {
  send(cmd: BusCommand): void;
  close(): Promise<void>;
  /** The thread, when it runs in one. */
  worker?: Worker;
}

export class NatsBroker implements Broker {
  readonly engine = "nats" as const;
  private nc: NatsConnection | null = null;
  private readonly prefix: string;
  private connected = false;
  private inboundUp = false;
  private readonly subs = new Map<number, Sub>();
  private nextSub = 1;
  private readonly statusListeners = new Set<(state: "up" | "down") => void>();
  private readonly origin = crypto.randomUUID().replace(/-/g, "").slice(0, 16);
  private readonly originHeaders: MsgHdrs;
  private inbound: Inbound | null = null;
  private lastBeat = 0;
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private closed = false;
  private readonly flushes = new Map<number, () => void>();
  private nextFlush = 1;
  /** JetStream requests waiting for their result, by id. */
  private readonly jsWaiting = new Map<number, { resolve(e: { ok: boolean; error?: string; available?: boolean; lastSeq?: number; ackFloor?: number }): void }>();
  /** Running JetStream readers, by id: made again when the bus worker is replaced. */
  private readonly jsReaders = new Map<number, JsReader>();
  private nextJs = 1;
  /** For /readyz and /metrics. */
  readonly stats = { batches: 0, delivered: 0, workerRestarts: 0, handlerErrors: 0 };

  constructor(private readonly opts: NatsBrokerOptions) {
    this.prefix = opts.subjectPrefix ? `${opts.subjectPrefix}.` : "";
    this.originHeaders = headers();
    this.originHeaders.set(ORIGIN_HEADER, this.origin);
  }

  /** Where inbound subscriptions run: `worker` or `main`. */
  get inboundMode(): "worker" | "main" {
    return this.opts.busWorker === false ? "main" : "worker";
  }

  async start(): Promise<void> {
    try {
      this.nc = await connect({
        servers: this.servers(),
        name: this.opts.name ?? "daarion-city",
        noEcho: true,
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        timeout: this.opts.connectTimeoutMs ?? 5000,
        pingInterval: 10_000,
      });
    } catch (err) {
      throw connectFailure("NATS_URL", this.opts.url, err);
    }
    this.connected = true;
    void this.watch(this.nc);
    await this.openInbound();
    if (this.inboundMode === "worker") {
      const limit = this.opts.beatTimeoutMs ?? 5000;
      this.watchdog = setInterval(() => {
        if (!this.closed && this.inbound && Date.now() - this.lastBeat > limit) void this.restartInbound("the bus worker stopped beating");
      }, Math.min(1000, limit / 2));
      this.watchdog.unref?.();
    }
  }

  publish(subject: string, payload: string): void {
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    try {
      nc.publish(this.prefix + subject, payload, { headers: this.originHeaders });
    } catch (err) {
      this.opts.log.warn("nats: publish failed", { subject, err });
    }
  }

  subscribe(pattern: string, handler: (subject: string, payload: string) => void, options?: SubscribeOptions): () => void {
    if (!this.inbound) throw new Error("nats: subscribe before start()");
    const id = this.nextSub++;
    const echo = options?.echo ?? false;
    this.subs.set(id, { pattern, echo, handler });
    this.inbound.send({ t: "sub", id, subject: pattern, echo });
    return () => {
      if (!this.subs.delete(id)) return;
      this.inbound?.send({ t: "unsub", id });
    };
  }

  /**
   * A round trip on both connections: everything published so far has reached the server, every
   * subscription made so far is in place, and whatever the server routed to this instance before
   * has been handed to the handlers.
   */
  async flush(): Promise<void> {
    await this.nc?.flush();
    const inbound = this.inbound;
    if (!inbound) return;
    const id = this.nextFlush++;
    const done = new Promise<void>((r) => this.flushes.set(id, r));
    inbound.send({ t: "flush", id });
    await Promise.race([done, Bun.sleep(5000)]);
    this.flushes.delete(id);
  }

  state(): "up" | "down" {
    return this.nc && !this.nc.isClosed() && this.connected && this.inboundUp ? "up" : "down";
  }

  onStatus(fn: (state: "up" | "down") => void): () => void {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  async request(subject: string, payload: string, timeoutMs: number): Promise<string> {
    const nc = this.nc;
    if (!nc || nc.isClosed() || !this.connected) throw new BrokerRequestError("disconnected", "nats: not connected");
    try {
      const msg = await nc.request(this.prefix + subject, payload, { timeout: timeoutMs });
      return msg.string();
    } catch (err) {
      const code = (err as NatsError).code;
      if (code === ErrorCode.Timeout) throw new BrokerRequestError("timeout", `nats: no reply on ${subject} within ${timeoutMs} ms`);
      if (code === ErrorCode.NoResponders) throw new BrokerRequestError("no_responders", `nats: nobody listens on ${subject}`);
      throw new BrokerRequestError("disconnected", `nats: request on ${subject} failed: ${(err as Error).message}`);
    }
  }

  async jetstream(): Promise<EventStream | null> {
    const ask = (cmd: Record<string, unknown>) =>
      new Promise<{ ok: boolean; error?: string; available?: boolean; lastSeq?: number; ackFloor?: number }>((resolve) => {
        const id = this.nextJs++;
        this.jsWaiting.set(id, { resolve });
        this.inbound?.send({ ...cmd, id } as BusCommand);
      });
    const probe = await ask({ t: "js.ensure", stream: "", subjects: [], maxAgeMs: 0, consumer: "", ackWaitMs: 0, probe: true });
    if (probe.available === false) return null;
    const reader = (cmd: (id: number, fromSeq: number) => BusCommand, handle: (events: StreamEvent[]) => void | Promise<void>) => {
      const id = this.nextJs++;
      const r = new JsReader(id, cmd, handle, (c) => this.inbound?.send(c), this.opts.log);
      this.jsReaders.set(id, r);
      this.inbound?.send(r.command());
      return () => {
        this.jsReaders.delete(id);
        this.inbound?.send({ t: "js.stop", id });
      };
    };
    return {
      ensure: async (o) => {
        const r = await ask({ t: "js.ensure", ...o });
        if (!r.ok) throw new Error(`jetstream: ${r.error}`);
        return { lastSeq: r.lastSeq ?? 0, ackFloor: r.ackFloor ?? 0 };
      },
      durable: (o, handle) => reader((id) => ({ t: "js.durable", id, stream: o.stream, consumer: o.consumer, batch: o.batch }), handle),
      ordered: (o, handle) => reader((id, from) => ({ t: "js.ordered", id, stream: o.stream, fromSeq: from || o.fromSeq, batch: o.batch }), handle),
    };
  }

  detail(): string {
    const where = this.inboundMode === "worker" ? "inbound in the bus worker" : "inbound on the main thread";
    const restarts = this.stats.workerRestarts ? `, ${this.stats.workerRestarts} worker restart(s)` : "";
    const links = `publish link ${this.connected ? "up" : "down"}, inbound link ${this.inboundUp ? "up" : "down"}`;
    return `${where}; ${links}${restarts}`;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.watchdog) clearInterval(this.watchdog);
    this.subs.clear();
    await this.inbound?.close();
    this.inbound = null;
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    try {
      await nc.drain();
    } catch {
      await nc.close();
    }
  }

  private servers(): string[] {
    return this.opts.url.split(",").map((s) => s.trim());
  }

  /** Starts the inbound side and waits until its connection is open; subscriptions are (re)made. */
  private async openInbound(): Promise<void> {
    const opened = Promise.withResolvers<void>();
    const onEvent = (e: BusEvent) => {
      switch (e.t) {
        case "batch":
          return this.deliver(e.items);
        case "beat":
          this.lastBeat = Date.now();
          return;
        case "opened":
          this.lastBeat = Date.now();
          this.setInbound(true);
          return opened.resolve();
        case "failed":
          return opened.reject(new Error(`NATS_URL: the bus cannot connect to ${this.opts.url}: ${e.message}`));
        case "status":
          if (e.state === "down") this.opts.log.warn("nats: inbound link down; other instances' publications are missed until it returns", { detail: e.detail });
          else this.opts.log.info("nats: inbound link back", { detail: e.detail });
          return this.setInbound(e.state === "up");
        case "closed":
          return;
        case "js.result":
          this.jsWaiting.get(e.id)?.resolve(e);
          this.jsWaiting.delete(e.id);
          return;
        case "js.batch":
          return void this.jsReaders.get(e.id)?.deliver(e.batch, e.items);
        case "js.error":
          this.opts.log.warn("nats: jetstream reader trouble; it retries", { error: e.error });
          return;
      }
    };
    this.inbound = this.inboundMode === "worker" ? this.workerInbound(onEvent) : this.mainInbound(onEvent);
    this.lastBeat = Date.now();
    this.inbound.send({
      t: "open", servers: this.servers(), name: `${this.opts.name ?? "daarion-city"}-bus`, prefix: this.prefix, origin: this.origin,
      batching: this.inboundMode === "worker", maxQueue: this.opts.maxBusQueue ?? 100_000,
    });
    for (const [id, s] of this.subs) this.inbound.send({ t: "sub", id, subject: s.pattern, echo: s.echo });
    await opened.promise;
  }

  private async restartInbound(why: string): Promise<void> {
    if (this.closed || !this.inbound) return;
    this.stats.workerRestarts++;
    this.opts.log.error("nats: restarting the bus worker", { why });
    const old = this.inbound;
    this.inbound = null;
    this.setInbound(false);
    void old.close();
    try {
      await this.openInbound();
      const inbound = this.inbound as Inbound | null;
      for (const r of this.jsReaders.values()) inbound?.send(r.command());
    } catch (err) {
      this.opts.log.error("nats: bus worker restart failed; retrying", { err });
      setTimeout(() => void this.restartInbound("restart failed"), 1000).unref?.();
    }
  }

  private workerInbound(onEvent: (e: BusEvent) => void): Inbound {
    const worker = new Worker(WORKER_SPECIFIER);
    let closing = false;
    worker.onmessage = (m: MessageEvent) => onEvent(m.data as BusEvent);
    worker.onerror = (e) => {
      this.opts.log.error("nats: bus worker failed", { err: (e as ErrorEvent).message });
      void this.restartInbound("the bus worker threw");
    };
    worker.addEventListener("close", () => {
      if (!closing && this.inbound?.worker === worker) void this.restartInbound("the bus worker exited");
    });
    return {
      worker,
      send: (cmd) => worker.postMessage(cmd),
      close: async () => {
        closing = true;
        const done = new Promise<void>((r) => {
          const prev = worker.onmessage;
          worker.onmessage = (m: MessageEvent) => {
            if ((m.data as BusEvent).t === "closed") r();
            else prev?.call(worker, m);
          };
        });
        worker.postMessage({ t: "close" } satisfies BusCommand);
        await Promise.race([done, Bun.sleep(1000)]);
        worker.terminate();
      },
    };
  }

  private mainInbound(onEvent: (e: BusEvent) => void): Inbound {
    const core = new BusCore(onEvent);
    let chain: Promise<void> = Promise.resolve();
    return {
      send: (cmd) => {
        chain = chain.then(() => core.handle(cmd)).catch(() => {});
      },
      close: () => core.handle({ t: "close" }),
    };
  }

  /** Hands a batch to the subscriptions, then asks for the next one. */
  private deliver(items: (number | string)[]): void {
    this.stats.batches++;
    for (let i = 0; i < items.length; i += 3) {
      if (items[i] === FLUSH_MARK) {
        this.flushes.get(Number(items[i + 2]))?.();
        continue;
      }
      const sub = this.subs.get(items[i] as number);
      if (!sub) continue;
      this.stats.delivered++;
      try {
        sub.handler(items[i + 1] as string, items[i + 2] as string);
      } catch (err) {
        this.stats.handlerErrors++;
        this.opts.log.error("nats: handler failed", { subject: items[i + 1], err });
      }
    }
    this.inbound?.send({ t: "ack" });
  }

  private setInbound(up: boolean): void {
    const before = this.state();
    this.inboundUp = up;
    this.emitIfChanged(before);
  }

  private emitIfChanged(before: "up" | "down"): void {
    const now = this.state();
    if (now === before) return;
    for (const fn of this.statusListeners) {
      try {
        fn(now);
      } catch (err) {
        this.opts.log.error("nats: status listener failed", { err });
      }
    }
  }

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === Events.Disconnect) {
        const before = this.state();
        this.connected = false;
        this.opts.log.warn("nats: disconnected", { server: s.data });
        this.emitIfChanged(before);
      } else if (s.type === Events.Reconnect) {
        const before = this.state();
        this.connected = true;
        this.opts.log.info("nats: reconnected", { server: s.data });
        this.emitIfChanged(before);
      }
    }
  }
}

/** One JetStream reader as the main thread sees it: hands batches to its handler, one at a time. */
class JsReader {
  /** The sequence after the last one handed over (an ordered reader made again resumes there). */
  private next = 0;

  constructor(
    private readonly id: number,
    private readonly make: (id: number, fromSeq: number) => BusCommand,
    private readonly handle: (events: StreamEvent[]) => void | Promise<void>,
    private readonly send: (c: BusCommand) => void,
    private readonly log: Logger,
  ) {}

  command(): BusCommand {
    return this.make(this.id, this.next);
  }

  async deliver(batch: number, items: (number | string)[]): Promise<void> {
    const events: StreamEvent[] = [];
    for (let i = 0; i < items.length; i += 4) {
      events.push({ seq: items[i] as number, subject: items[i + 1] as string, payload: items[i + 2] as string, time: items[i + 3] as number });
    }
    try {
      await this.handle(events);
      this.next = events[events.length - 1]!.seq + 1;
      this.send({ t: "js.done", id: this.id, batch });
    } catch (err) {
      // Not done: a durable batch stays unacknowledged and comes back after the ack wait.
      this.log.warn("nats: a jetstream batch was not handled; it will be delivered again", { err });
      this.send({ t: "js.stop", id: this.id });
      setTimeout(() => this.send(this.command()), 1000).unref?.();
    }
  }
}
