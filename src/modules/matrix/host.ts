/**
 * Where the Matrix sync loop runs: in the sync worker thread (design card: "the Matrix sync loop in
 * worker threads"; MATRIX_SYNC_WORKER=on, the default) or on the main thread (`off`, so the bench
 * can measure what the worker buys). Both hosts take the same options and report through the same
 * callbacks, so the service above does not know which it has.
 */
import type { AggregateChanges, TrackedRoom } from "./aggregator.ts";
import { MatrixSyncLoop, type LoopStatus, type RoomMapping, type SyncSettings } from "./sync-loop.ts";
import { workerEntry } from "../../workers/entry.ts";

export type { SyncSettings };

export interface SyncHandlers {
  onSince(nextBatch: string): void;
  onChanges(changes: AggregateChanges): void;
  onMapping(rooms: TrackedRoom[]): void;
  onStatus(status: LoopStatus): void;
  log(level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>): void;
  /** The host died (a worker crashed or stopped beating); the service restarts it. */
  onDead(reason: string): void;
}

export interface SyncHost {
  start(settings: SyncSettings, handlers: SyncHandlers): void;
  setRooms(rooms: RoomMapping[]): void;
  /** Stops the loop; resolves when it has ended (or after 2 s, when a worker is terminated). */
  stop(): Promise<void>;
}

/** Commands to the worker. */
export type SyncCommand = { t: "start"; settings: SyncSettings } | { t: "rooms"; rooms: RoomMapping[] } | { t: "stop" };
/** Reports from the worker. */
export type SyncReport =
  | { t: "since"; nextBatch: string }
  | { t: "changes"; changes: AggregateChanges }
  | { t: "mapping"; rooms: TrackedRoom[] }
  | { t: "status"; status: LoopStatus }
  | { t: "log"; level: "info" | "warn" | "error"; msg: string; fields?: Record<string, unknown> }
  | { t: "beat" }
  | { t: "stopped" };

/** Sleeps `ms`, resolving early when `signal` aborts. */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

/** Builds a loop from settings and handlers (shared by both hosts). */
export function createLoop(s: SyncSettings, h: Omit<SyncHandlers, "onDead">): MatrixSyncLoop {
  return new MatrixSyncLoop({
    ...s, sleep: abortableSleep, now: () => Date.now(), random: Math.random,
    onSince: h.onSince, onChanges: h.onChanges, onMapping: h.onMapping, onStatus: h.onStatus, log: h.log,
  });
}

/** The loop on the main thread. */
export class InlineSyncHost implements SyncHost {
  private loop: MatrixSyncLoop | null = null;

  start(settings: SyncSettings, handlers: SyncHandlers): void {
    this.loop = createLoop(settings, handlers);
    void this.loop.start().catch((err) => handlers.onDead(`the sync loop threw: ${(err as Error)?.message ?? err}`));
  }

  setRooms(rooms: RoomMapping[]): void {
    this.loop?.setRooms(rooms);
  }

  async stop(): Promise<void> {
    await this.loop?.stop();
    this.loop = null;
  }
}

const WORKER_SPECIFIER = workerEntry("workers/matrix-sync.worker.ts");

/** Beats expected from the worker; none for this long means it is stuck or gone. */
const WORKER_SILENCE_MS = 5000;

/** The loop in the sync worker thread. */
export class WorkerSyncHost implements SyncHost {
  private worker: Worker | null = null;
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private stopped: Promise<void> | null = null;
  private resolveStopped: (() => void) | null = null;

  start(settings: SyncSettings, handlers: SyncHandlers): void {
    const worker = new Worker(WORKER_SPECIFIER);
    this.worker = worker;
    let lastBeat = Date.now();
    let dead = false;
    const die = (reason: string) => {
      if (dead || this.worker !== worker) return;
      dead = true;
      this.clear();
      worker.terminate();
      handlers.onDead(reason);
    };
    worker.onmessage = (m: MessageEvent) => {
      const r = m.data as SyncReport;
      lastBeat = Date.now();
      switch (r.t) {
        case "since": return handlers.onSince(r.nextBatch);
        case "changes": return handlers.onChanges(r.changes);
        case "mapping": return handlers.onMapping(r.rooms);
        case "status": return handlers.onStatus(r.status);
        case "log": return handlers.log(r.level, r.msg, r.fields);
        case "stopped": return this.resolveStopped?.();
      }
    };
    worker.onerror = (e) => die(`the sync worker threw: ${(e as ErrorEvent).message}`);
    worker.addEventListener("close", () => die("the sync worker exited"));
    this.watchdog = setInterval(() => {
      if (Date.now() - lastBeat > WORKER_SILENCE_MS) die(`the sync worker sent nothing for ${WORKER_SILENCE_MS} ms`);
    }, 1000);
    worker.postMessage({ t: "start", settings } satisfies SyncCommand);
  }

  setRooms(rooms: RoomMapping[]): void {
    this.worker?.postMessage({ t: "rooms", rooms } satisfies SyncCommand);
  }

  async stop(): Promise<void> {
    const worker = this.worker;
    if (!worker) return;
    this.stopped ??= new Promise<void>((r) => (this.resolveStopped = r));
    worker.postMessage({ t: "stop" } satisfies SyncCommand);
    const done = this.stopped;
    this.clear();
    await Promise.race([done, Bun.sleep(2000)]);
    worker.terminate();
  }

  private clear(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    this.worker = null;
  }
}
