/**
 * NatsBroker: the production broker over NATS core pub/sub (`nats` package). The connection uses
 * `noEcho`, so an instance never receives its own publications; it reconnects forever, and while
 * it is disconnected publications are buffered by the client up to its reconnect buffer and
 * dropped beyond it (at most once, like the contract says).
 */
import { connect, ErrorCode, Events, type NatsConnection, type NatsError, type Subscription } from "nats";
import type { Logger } from "../../log.ts";
import { BrokerRequestError, type Broker } from "./broker.ts";

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
}

export class NatsBroker implements Broker {
  readonly engine = "nats" as const;
  private nc: NatsConnection | null = null;
  private readonly prefix: string;
  private connected = false;
  private readonly subs = new Set<Subscription>();

  constructor(private readonly opts: NatsBrokerOptions) {
    this.prefix = opts.subjectPrefix ? `${opts.subjectPrefix}.` : "";
  }

  async start(): Promise<void> {
    try {
      this.nc = await connect({
        servers: this.opts.url.split(",").map((s) => s.trim()),
        name: this.opts.name ?? "daarion-city",
        noEcho: true,
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        timeout: this.opts.connectTimeoutMs ?? 5000,
        pingInterval: 10_000,
      });
    } catch (err) {
      throw new Error(`nats: cannot connect to ${this.opts.url}: ${(err as Error).message}`);
    }
    this.connected = true;
    void this.watch(this.nc);
  }

  publish(subject: string, payload: string): void {
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    try {
      nc.publish(this.prefix + subject, payload);
    } catch (err) {
      this.opts.log.warn("nats: publish failed", { subject, err });
    }
  }

  subscribe(pattern: string, handler: (subject: string, payload: string) => void): () => void {
    if (!this.nc) throw new Error("nats: subscribe before start()");
    const cut = this.prefix.length;
    const log = this.opts.log;
    const sub = this.nc.subscribe(this.prefix + pattern, {
      callback: (err, msg) => {
        if (err) {
          log.warn("nats: subscription error", { pattern, err });
          return;
        }
        try {
          handler(msg.subject.slice(cut), msg.string());
        } catch (e) {
          log.error("nats: handler failed", { subject: msg.subject, err: e });
        }
      },
    });
    this.subs.add(sub);
    return () => {
      this.subs.delete(sub);
      sub.unsubscribe();
    };
  }

  async flush(): Promise<void> {
    await this.nc?.flush();
  }

  state(): "up" | "down" {
    return this.nc && !this.nc.isClosed() && this.connected ? "up" : "down";
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

  async close(): Promise<void> {
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    this.subs.clear();
    try {
      await nc.drain();
    } catch {
      await nc.close();
    }
  }

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === Events.Disconnect) {
        this.connected = false;
        this.opts.log.warn("nats: disconnected", { server: s.data });
      } else if (s.type === Events.Reconnect) {
        this.connected = true;
        this.opts.log.info("nats: reconnected", { server: s.data });
      }
    }
  }
}
