/**
 * BusCore: the inbound side of the NATS broker (ARCHITECTURE "Workers": one bus worker owns every
 * inbound NATS subscription). It holds its own connection, subscribes and unsubscribes on command,
 * drops this instance's own publications (they carry its origin in a header) unless a subscription
 * asks for them, and hands what arrives over in batches: while the receiver still works on one
 * batch, everything that arrives goes into the next, so a busy main thread gets fewer, larger
 * hand-offs instead of one per publication.
 *
 * The same code runs in the bus worker thread (`src/workers/bus.worker.ts`, the default) and, with
 * NATS_BUS_WORKER=off, on the main thread, so the two can be measured against each other.
 */
import { connect, Events, type NatsConnection, type Subscription } from "nats";
import { BusJetStream, type JetStreamCommand, type JetStreamEvent } from "./bus-jetstream.ts";

/** The header naming the instance that published a message. */
export const ORIGIN_HEADER = "Dc-Origin";

/** Commands to a bus. */
export type BusCommand =
  | { t: "open"; servers: string[]; name: string; prefix: string; origin: string; batching: boolean; maxQueue: number }
  | { t: "sub"; id: number; subject: string; echo: boolean }
  | { t: "unsub"; id: number }
  | { t: "ack" }
  /** A round trip to the server; answered in line with the messages (see FLUSH_MARK). */
  | { t: "flush"; id: number }
  | { t: "close" }
  | JetStreamCommand;

/**
 * In a batch, a subscription id of -1 marks the answer to a `flush` (its payload is the flush id):
 * every message the server sent before answering the round trip comes before it.
 */
export const FLUSH_MARK = -1;

/** What a bus reports. `items` is flat: subscription id, subject (without prefix), payload, … */
export type BusEvent =
  | { t: "batch"; items: (number | string)[] }
  | { t: "status"; state: "up" | "down"; detail?: string }
  | { t: "opened" }
  | { t: "failed"; message: string }
  | { t: "beat" }
  | { t: "closed" }
  | JetStreamEvent;

export class BusCore {
  private nc: NatsConnection | null = null;
  private readonly subs = new Map<number, Subscription>();
  private queue: (number | string)[] = [];
  private inFlight = false;
  private scheduled = false;
  private overflowed = false;
  private prefix = "";
  private batching = true;
  private maxQueue = 300_000;

  private readonly js: BusJetStream;

  constructor(private readonly emit: (e: BusEvent) => void) {
    this.js = new BusJetStream(() => this.nc, () => this.prefix, emit);
  }

  /** Runs one command; never throws (failures are reported as events). */
  async handle(cmd: BusCommand): Promise<void> {
    switch (cmd.t) {
      case "open":
        return this.open(cmd);
      case "sub":
        return this.sub(cmd.id, cmd.subject, cmd.echo);
      case "unsub": {
        const s = this.subs.get(cmd.id);
        this.subs.delete(cmd.id);
        s?.unsubscribe();
        return;
      }
      case "ack":
        this.inFlight = false;
        if (this.queue.length) this.schedule();
        return;
      case "flush":
        try {
          await this.nc?.flush();
        } catch {
          /* answered anyway: the caller learns the state from status events */
        }
        this.push(FLUSH_MARK, "", String(cmd.id));
        return;
      case "close":
        this.js.stopAll();
        await this.close();
        this.emit({ t: "closed" });
        return;
      default:
        return this.js.handle(cmd);
    }
  }

  private async open(cmd: Extract<BusCommand, { t: "open" }>): Promise<void> {
    this.prefix = cmd.prefix;
    this.batching = cmd.batching;
    this.maxQueue = cmd.maxQueue;
    try {
      this.nc = await connect({
        servers: cmd.servers, name: cmd.name, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 500, timeout: 5000, pingInterval: 10_000,
      });
    } catch (err) {
      this.emit({ t: "failed", message: (err as Error).message });
      return;
    }
    this.origin = cmd.origin;
    this.emit({ t: "opened" });
    void this.watch(this.nc);
  }

  private origin = "";

  private sub(id: number, subject: string, echo: boolean): void {
    if (!this.nc) return;
    const cut = this.prefix.length;
    const origin = this.origin;
    const s = this.nc.subscribe(this.prefix + subject, {
      callback: (err, msg) => {
        if (err) return;
        if (!echo && msg.headers?.get(ORIGIN_HEADER) === origin) return;
        this.push(id, msg.subject.slice(cut), msg.string());
      },
    });
    this.subs.set(id, s);
  }

  private push(id: number, subject: string, payload: string): void {
    if (!this.batching) {
      this.emit({ t: "batch", items: [id, subject, payload] });
      return;
    }
    if (this.queue.length >= this.maxQueue * 3 && id !== FLUSH_MARK) {
      // The receiver cannot keep up: drop, and say so, so it recovers what matters from the store.
      if (!this.overflowed) {
        this.overflowed = true;
        this.emit({ t: "status", state: "down", detail: "bus queue overflow" });
      }
      return;
    }
    this.queue.push(id, subject, payload);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight) return;
    this.scheduled = true;
    // After the current read from the socket: every message of it goes into one batch.
    queueMicrotask(() => {
      this.scheduled = false;
      if (this.inFlight || this.queue.length === 0) return;
      const items = this.queue;
      this.queue = [];
      this.inFlight = true;
      this.emit({ t: "batch", items });
      if (this.overflowed) {
        this.overflowed = false;
        this.emit({ t: "status", state: "up" });
      }
    });
  }

  private async close(): Promise<void> {
    const nc = this.nc;
    this.nc = null;
    this.subs.clear();
    if (!nc || nc.isClosed()) return;
    try {
      await nc.close();
    } catch {
      /* closing anyway */
    }
  }

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === Events.Disconnect) this.emit({ t: "status", state: "down", detail: String(s.data) });
      else if (s.type === Events.Reconnect) this.emit({ t: "status", state: "up", detail: String(s.data) });
    }
  }
}
