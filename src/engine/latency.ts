/**
 * Where a message's time goes, as Prometheus histograms (issue "tail latency": see which stage owns
 * the p99 before changing anything). Times are `performance.now()` differences, in seconds.
 *
 * Stages of one message, from the frame (or HTTP request) to the publication:
 * - `admit`: read → admitted (body validated, room known, write budget taken);
 * - `queue`: admitted → its batch taken for commit (waiting behind the room's previous commit);
 * - `commit`: batch taken → committed by the store (per batch);
 * - `publish`: committed → handed to Bun's pub/sub and the broker (per batch);
 * - `total`: read → published.
 *
 * And the event loop's own delay: how late a timer fires, sampled every 25 ms; a GC pause or a
 * long task shows here (Bun exposes no GC pause events: `PerformanceObserver` "gc" never fires).
 */
import { Histogram, type Registry } from "prom-client";

export type WriteStage = "admit" | "queue" | "commit" | "publish" | "total";

/** Records stage times of the write path. */
export interface StageObserver {
  observe(stage: WriteStage, seconds: number): void;
  /** Messages in one commit. */
  batch(size: number): void;
}

/** Records nothing (tests and partial cities). */
export const NO_STAGES: StageObserver = { observe() {}, batch() {} };

/** 50 µs … 2.5 s: a loopback commit is ~0.2 ms, a bad tail hundreds of ms. */
const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** The write path's stage histograms (`daarion_city_message_stage_seconds{stage}`, batch sizes). */
export class WriteLatency implements StageObserver {
  readonly stages = new Histogram({ name: "daarion_city_message_stage_seconds", help: "Time of a room message in each stage of the write path: admit, queue, commit, publish (per batch), total (read to published)", labelNames: ["stage"], buckets: LATENCY_BUCKETS, registers: [] });
  readonly batches = new Histogram({ name: "daarion_city_message_commit_batch_size", help: "Messages per commit (group commit)", buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256], registers: [] });
  private readonly by: Record<WriteStage, { observe(v: number): void }>;

  constructor() {
    this.by = {
      admit: this.stages.labels("admit"), queue: this.stages.labels("queue"), commit: this.stages.labels("commit"),
      publish: this.stages.labels("publish"), total: this.stages.labels("total"),
    };
  }

  observe(stage: WriteStage, seconds: number): void {
    this.by[stage].observe(seconds);
  }

  batch(size: number): void {
    this.batches.observe(size);
  }

  register(registry: Registry): void {
    registry.registerMetric(this.stages);
    registry.registerMetric(this.batches);
  }
}

/**
 * Event-loop delay: a timer armed every `intervalMs` notes how late it fired
 * (`daarion_city_event_loop_delay_seconds`). Unref'd: it never keeps the process alive.
 */
export class EventLoopDelay {
  readonly histogram = new Histogram({ name: "daarion_city_event_loop_delay_seconds", help: "How late a 25 ms timer fired: time the main thread was busy (tasks, GC) when it was due", buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers: [] });
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly intervalMs = 25) {}

  start(): void {
    let due = performance.now() + this.intervalMs;
    const tick = () => {
      const now = performance.now();
      this.histogram.observe(Math.max(0, now - due) / 1000);
      due = now + this.intervalMs;
      this.timer = setTimeout(tick, this.intervalMs);
      this.timer.unref?.();
    };
    this.timer = setTimeout(tick, this.intervalMs);
    this.timer.unref?.();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
