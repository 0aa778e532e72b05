/**
 * The main thread's side of a worker that answers each request `{ id, … }` with
 * `{ id, ok: true, result }` or `{ id, ok: false, error, code }`: request ids, the unanswered
 * requests, and failing them all once the worker died or was closed. SQLite's writer thread and
 * PostgreSQL's commit thread both talk this way; the owner sets the worker's `onerror` (and calls
 * {@link WorkerCalls.fail} from it).
 */
export class WorkerCalls {
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  private nextId = 1;
  private dead: Error | null = null;

  /**
   * Takes over `worker.onmessage`.
   * @param errorPrefix put before a worker's error message in the rejection, e.g. `"sqlite: "`
   */
  constructor(
    private readonly worker: Worker,
    private readonly errorPrefix = "",
  ) {
    worker.onmessage = (e: MessageEvent) => {
      const r = e.data as { id: number; ok: boolean; result?: unknown; error?: string; code?: string };
      const p = this.pending.get(r.id);
      if (!p) return; // forgotten: answered another way
      this.pending.delete(r.id);
      if (r.ok) p.resolve(r.result);
      else p.reject(Object.assign(new Error(`${this.errorPrefix}${r.error}`), { code: r.code }));
    };
  }

  /** False once {@link fail} was called. */
  get alive(): boolean {
    return this.dead === null;
  }

  /** True while a request is unanswered. */
  get busy(): boolean {
    return this.pending.size > 0;
  }

  /**
   * Posts `msg` with a fresh `id`.
   * @returns the id and the answer: the worker's `result`, or an Error with its message and `code`;
   *   rejected at once (id -1) after {@link fail}
   */
  send<T>(msg: Record<string, unknown>): { id: number; answer: Promise<T> } {
    if (this.dead) return { id: -1, answer: Promise.reject(this.dead) };
    const id = this.nextId++;
    const answer = new Promise<T>((resolve, reject) => this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject }));
    this.worker.postMessage({ ...msg, id });
    return { id, answer };
  }

  /** Drops a request that was answered another way: its message, when it comes, is ignored. */
  forget(id: number): void {
    this.pending.delete(id);
  }

  /** Rejects every unanswered request with `err`, and every later one at once. */
  fail(err: Error): void {
    this.dead = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
