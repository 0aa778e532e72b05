/**
 * MemoryBroker: the in-process broker of the embedded default. Choose it for a single instance:
 * with one node on its network it never delivers anything (there is no other instance). Several
 * nodes on one {@link MemoryNetwork} act like instances on one NATS, which lets tests run two
 * city instances in one process.
 */
import { BrokerRequestError, subjectMatches, type Broker, type SubscribeOptions } from "./broker.ts";

type Handler = (subject: string, payload: string) => void;

/** A shared medium for MemoryBroker nodes; nodes on different networks never see each other. */
export class MemoryNetwork {
  readonly nodes = new Set<MemoryBroker>();
}

export class MemoryBroker implements Broker {
  readonly engine = "memory" as const;
  private readonly subs = new Set<{ pattern: string; handler: Handler; echo: boolean }>();
  private closed = false;
  private linkDown = false;
  private pending: Promise<void> = Promise.resolve();
  private readonly statusListeners = new Set<(state: "up" | "down") => void>();

  /** @param network nodes to talk to; default: a network of its own (single instance). */
  constructor(private readonly network: MemoryNetwork = new MemoryNetwork()) {}

  async start(): Promise<void> {
    this.network.nodes.add(this);
  }

  publish(subject: string, payload: string): void {
    if (this.closed || this.linkDown) return;
    for (const node of this.network.nodes) {
      // Delivered on a later microtask, like a network hop, in publish order.
      this.pending = this.pending.then(() => node.deliver(subject, payload, node === this));
    }
  }

  subscribe(pattern: string, handler: Handler, options?: SubscribeOptions): () => void {
    const sub = { pattern, handler, echo: options?.echo ?? false };
    this.subs.add(sub);
    return () => this.subs.delete(sub);
  }

  async flush(): Promise<void> {
    await this.pending;
  }

  state(): "up" | "down" {
    return this.closed || this.linkDown ? "down" : "up";
  }

  onStatus(fn: (state: "up" | "down") => void): () => void {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  /**
   * Cuts this node off its network (`true`) or reconnects it, as a NATS outage would: while cut,
   * its publications and those sent to it are lost. For outage tests; a lone node never needs it.
   */
  setLinkDown(down: boolean): void {
    if (down === this.linkDown) return;
    this.linkDown = down;
    for (const fn of this.statusListeners) fn(down ? "down" : "up");
  }

  /** The patterns subscribed on this node (interest), for tests and metrics. */
  subscriptions(): string[] {
    return [...this.subs].map((s) => s.pattern);
  }

  /** Not available: an in-process broker reaches no service outside this process. */
  async request(subject: string): Promise<string> {
    throw new BrokerRequestError("not_available", `request on ${subject} needs NATS (set NATS_URL)`);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subs.clear();
    this.network.nodes.delete(this);
  }

  private deliver(subject: string, payload: string, own: boolean): void {
    if (this.closed || (this.linkDown && !own)) return;
    for (const s of this.subs) if ((!own || s.echo) && subjectMatches(s.pattern, subject)) s.handler(subject, payload);
  }
}
