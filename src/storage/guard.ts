/**
 * guardStore: the store as the services see it. Any failure of the engine itself (unreachable,
 * timed out, disk full) becomes AppError `store_unavailable` (HTTP 503, a WS `error` frame), on
 * reads as on writes, so no store outage ever answers 500. A refusal for the data (a constraint,
 * a value the engine cannot store) passes through unchanged, for the writer to isolate; errors
 * that are already AppErrors pass through too.
 *
 * It also remembers the last write that failed for lack of resources (a full disk, a read-only
 * file system: SQLITE_FULL / IOERR / READONLY, PostgreSQL classes 53 and 58, 25006):
 * {@link GuardedStore.writeTrouble} reports it until a write succeeds again or `troubleMs` pass,
 * so readiness says so even when its own one-row probe still succeeds. (An unreachable store needs
 * no memory: the probe fails as well.)
 */
import { AppError } from "../engine/errors.ts";
import type { Logger } from "../log.ts";
import { isDataError } from "./data-errors.ts";
import type { Store } from "./store.ts";

/** Methods that are not calls to the engine. */
const PLAIN = new Set<PropertyKey>(["engine"]);
/** Methods that write what a user asked for (the readiness probe is not one of them). */
const WRITES = new Set<PropertyKey>([
  "createRoom", "updateRoom", "appendMessages", "secondmeSession", "appendSecondmeMessage", "setSecondmeStatus", "clearSecondme",
]);

export interface GuardedStore extends Store {
  /** The last write that failed for the engine's sake within `troubleMs`, if none succeeded since. */
  writeTrouble(): string | null;
}

export function guardStore(store: Store, log: Logger, troubleMs = 10_000): GuardedStore {
  let lastLog = 0;
  let trouble: { at: number; message: string } | null = null;
  const writeTrouble = () => (trouble && Date.now() - trouble.at < troubleMs ? trouble.message : null);
  return new Proxy(store as GuardedStore, {
    get(target, prop, receiver) {
      if (prop === "writeTrouble") return writeTrouble;
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== "function" || PLAIN.has(prop)) return v;
      const isWrite = WRITES.has(prop);
      return (...args: unknown[]) => {
        let p: Promise<unknown>;
        try {
          p = (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        } catch (err) {
          p = Promise.reject(err);
        }
        if (isWrite) p = p.then((r) => ((trouble = null), r));
        return p.catch((err: unknown) => {
          if (err instanceof AppError || isDataError(err)) throw err;
          if (isWrite && isResourceError(err)) trouble = { at: Date.now(), message: `a ${String(prop)} failed: ${(err as Error)?.message ?? String(err)}` };
          if (Date.now() - lastLog > 5000) {
            lastLog = Date.now();
            log.warn("store: unavailable", { engine: target.engine, op: String(prop), err });
          }
          throw Object.assign(new AppError("store_unavailable", "the store is unavailable; try again shortly", 1), { cause: err });
        });
      };
    },
  });
}

/** A failure for lack of resources (disk full, I/O error, read-only), not of reach or of data. */
export function isResourceError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  return /^SQLITE_(FULL|IOERR|READONLY)/.test(code) || /^5[38][0-9A-Z]{3}$/.test(code) || code === "25006";
}
