/**
 * The JetStream side of the bus (ARCHITECTURE "one bus worker … JetStream consumers"): it makes
 * sure a stream and a durable consumer exist, pulls batches from the durable consumer (each batch
 * acknowledged only when the main thread says it is stored), and reads the stream in order from a
 * given sequence with an ordered consumer. Runs where the BusCore runs (the bus worker by default).
 *
 * Batches are flat arrays: stream sequence, subject (without the prefix), payload, time (epoch ms),
 * repeated. One batch per consumer is in flight until the main thread answers.
 */
import {
  AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, type Consumer, type ConsumerMessages, type JsMsg, type NatsConnection,
} from "nats";

export type JetStreamCommand =
  /** With `probe`, only says whether the server has JetStream. */
  | { t: "js.ensure"; id: number; stream: string; subjects: string[]; maxAgeMs: number; consumer: string; ackWaitMs: number; probe?: boolean }
  | { t: "js.durable"; id: number; stream: string; consumer: string; batch: number }
  | { t: "js.ordered"; id: number; stream: string; fromSeq: number; batch: number }
  | { t: "js.done"; id: number; batch: number }
  | { t: "js.stop"; id: number };

export type JetStreamEvent =
  | { t: "js.result"; id: number; ok: boolean; error?: string; available?: boolean; lastSeq?: number; ackFloor?: number }
  | { t: "js.batch"; id: number; batch: number; items: (number | string)[] }
  | { t: "js.error"; id: number; error: string };

interface Reader {
  stop(): void;
  /** The main thread is done with batch `n`: ack it (durable) and send the next. */
  done(n: number): void;
}

export class BusJetStream {
  private readonly readers = new Map<number, Reader>();

  constructor(
    private readonly nc: () => NatsConnection | null,
    private readonly prefix: () => string,
    private readonly emit: (e: JetStreamEvent) => void,
  ) {}

  async handle(cmd: JetStreamCommand): Promise<void> {
    switch (cmd.t) {
      case "js.ensure":
        return this.ensure(cmd);
      case "js.durable":
        return this.start(cmd.id, () => this.durable(cmd));
      case "js.ordered":
        return this.start(cmd.id, () => this.ordered(cmd));
      case "js.done":
        this.readers.get(cmd.id)?.done(cmd.batch);
        return;
      case "js.stop":
        this.readers.get(cmd.id)?.stop();
        this.readers.delete(cmd.id);
        return;
    }
  }

  stopAll(): void {
    for (const r of this.readers.values()) r.stop();
    this.readers.clear();
  }

  private async ensure(cmd: Extract<JetStreamCommand, { t: "js.ensure" }>): Promise<void> {
    const nc = this.nc();
    if (!nc) return this.emit({ t: "js.result", id: cmd.id, ok: false, error: "not connected" });
    let jsm;
    try {
      jsm = await nc.jetstreamManager({ timeout: 3000 });
    } catch (err) {
      // No JetStream on this server: the caller falls back to core subscriptions.
      return this.emit({ t: "js.result", id: cmd.id, ok: true, available: false, error: (err as Error).message });
    }
    if (cmd.probe) {
      // jetstreamManager() only checks the API when asked: ask the account info.
      try {
        await jsm.getAccountInfo();
        return this.emit({ t: "js.result", id: cmd.id, ok: true, available: true });
      } catch (err) {
        return this.emit({ t: "js.result", id: cmd.id, ok: true, available: false, error: (err as Error).message });
      }
    }
    try {
      const subjects = cmd.subjects.map((s) => this.prefix() + s);
      const config = { name: cmd.stream, subjects, retention: RetentionPolicy.Limits, storage: StorageType.File, max_age: cmd.maxAgeMs * 1_000_000 };
      let info;
      try {
        info = await jsm.streams.info(cmd.stream);
        const same = info.config.subjects?.length === subjects.length && subjects.every((s) => info!.config.subjects?.includes(s));
        if (!same || info.config.max_age !== config.max_age) info = await jsm.streams.update(cmd.stream, { ...info.config, subjects, max_age: config.max_age });
      } catch {
        info = await jsm.streams.add(config);
      }
      let consumer;
      try {
        consumer = await jsm.consumers.info(cmd.stream, cmd.consumer);
      } catch {
        consumer = await jsm.consumers.add(cmd.stream, {
          durable_name: cmd.consumer, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, ack_wait: cmd.ackWaitMs * 1_000_000, max_ack_pending: 20_000,
        });
      }
      this.emit({ t: "js.result", id: cmd.id, ok: true, available: true, lastSeq: info.state.last_seq, ackFloor: consumer.ack_floor.stream_seq });
    } catch (err) {
      this.emit({ t: "js.result", id: cmd.id, ok: false, error: (err as Error).message });
    }
  }

  private async start(id: number, make: () => Promise<Reader>): Promise<void> {
    this.readers.get(id)?.stop();
    try {
      this.readers.set(id, await make());
    } catch (err) {
      this.emit({ t: "js.error", id, error: (err as Error).message });
    }
  }

  /** Pulls batches from the durable consumer; acknowledges a batch when the main thread is done with it. */
  private async durable(cmd: Extract<JetStreamCommand, { t: "js.durable" }>): Promise<Reader> {
    const nc = this.nc();
    if (!nc) throw new Error("not connected");
    const consumer = await nc.jetstream().consumers.get(cmd.stream, cmd.consumer);
    return this.loop(cmd.id, consumer, cmd.batch, true);
  }

  /** Reads the stream in order from `fromSeq` (an ordered consumer: nothing to acknowledge). */
  private async ordered(cmd: Extract<JetStreamCommand, { t: "js.ordered" }>): Promise<Reader> {
    const nc = this.nc();
    if (!nc) throw new Error("not connected");
    const opts = cmd.fromSeq > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: cmd.fromSeq } : { deliver_policy: DeliverPolicy.New };
    const consumer = await nc.jetstream().consumers.get(cmd.stream, opts);
    return this.loop(cmd.id, consumer, cmd.batch, false);
  }

  /**
   * Consumes continuously; what arrives while the main thread works on a batch goes into the next
   * one (at most `max`), handed over as soon as that batch is done (acknowledged first, on a
   * durable consumer). A live event waits for no timer: it is handed over on the next microtask.
   */
  private loop(id: number, consumer: Consumer, max: number, ack: boolean): Reader {
    let stopped = false;
    let batchNo = 0;
    let pending: JsMsg[] = [];
    let inFlight: { n: number; msgs: JsMsg[] } | null = null;
    let scheduled = false;
    let messages: ConsumerMessages | null = null;
    // Backpressure: past `cap` waiting messages the reader stops pulling until the main thread catches up.
    const cap = Math.max(max * 4, 400);
    let resume: (() => void) | null = null;
    const cut = this.prefix().length;
    const flush = () => {
      scheduled = false;
      if (stopped || inFlight || pending.length === 0) return;
      const msgs = pending.slice(0, max);
      pending = pending.slice(msgs.length);
      const n = ++batchNo;
      inFlight = { n, msgs };
      const items: (number | string)[] = [];
      for (const m of msgs) items.push(m.seq, m.subject.slice(cut), m.string(), Math.round(m.info.timestampNanos / 1_000_000));
      this.emit({ t: "js.batch", id, batch: n, items });
    };
    const schedule = () => {
      if (scheduled || inFlight) return;
      scheduled = true;
      queueMicrotask(flush);
    };
    const run = async () => {
      while (!stopped) {
        try {
          messages = await consumer.consume({ max_messages: Math.max(max, 100) });
          for await (const m of messages) {
            if (stopped) break;
            pending.push(m);
            schedule();
            if (pending.length >= cap) await new Promise<void>((r) => (resume = r));
          }
        } catch (err) {
          if (stopped) return;
          this.emit({ t: "js.error", id, error: (err as Error).message });
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    };
    void run();
    return {
      stop() {
        // Whatever was not handed over or not done stays unacknowledged: delivered again later.
        stopped = true;
        resume?.();
        void messages?.close();
      },
      done(n) {
        if (!inFlight || inFlight.n !== n) return;
        if (ack && !stopped) for (const m of inFlight.msgs) m.ack();
        inFlight = null;
        if (resume && pending.length < cap) {
          const r = resume;
          resume = null;
          r();
        }
        schedule();
      },
    };
  }
}
