/**
 * The PostgreSQL commit thread (`POSTGRES_COMMIT=caller`, see `PostgresStore`): one connection that
 * runs the store's message appends, on a thread whose event loop has nothing else to do, so a
 * statement is written the moment it arrives and its answer read the moment it comes back.
 *
 * Protocol: `{ op: "open", url, control }` once (`control`: the SharedArrayBuffer laid out as
 * `COMMIT_SLOT` (postgres-writes.ts) says), then `{ id, json }` (`json`: the RoomBatch[] of one
 * `appendMessagesMany`, as JSON) in increasing `id`, each answered twice: in `control` (the first
 * seqs, then the id, then `Atomics.notify`, for a caller blocked in `Atomics.wait`) and by
 * `{ id, ok: true, result }` or `{ id, ok: false, error, code }` (`code`: PostgreSQL's SQLSTATE or
 * the connection's error code) for a caller that stopped waiting; `{ id, op: "close" }` last.
 */
import postgres, { type Sql } from "postgres";
import { appendMany, COMMIT_SLOT, connectionOptions } from "./postgres-writes.ts";
import type { RoomBatch } from "./store.ts";

declare const self: Worker;

let sql: Sql | null = null;
let ctrl: Int32Array | null = null;
let firsts: Float64Array | null = null;

self.onmessage = async (e: MessageEvent) => {
  const m = e.data;
  if (m.op === "open") {
    sql = postgres(m.url, connectionOptions(1, "commit thread"));
    ctrl = new Int32Array(m.control, 0, COMMIT_SLOT.controlInts);
    firsts = new Float64Array(m.control, COMMIT_SLOT.controlInts * 4, COMMIT_SLOT.maxRooms);
    return;
  }
  if (m.op === "close") {
    await sql?.end({ timeout: 5 }).catch(() => {});
    sql = null;
    self.postMessage({ id: m.id, ok: true });
    return;
  }
  try {
    if (!sql || !ctrl || !firsts) throw new Error("postgres committer: not open");
    const result = await appendMany(sql, JSON.parse(m.json) as RoomBatch[]);
    if (result.length <= COMMIT_SLOT.maxRooms) {
      firsts.set(result);
      Atomics.store(ctrl, COMMIT_SLOT.status, COMMIT_SLOT.ok);
    } else Atomics.store(ctrl, COMMIT_SLOT.status, COMMIT_SLOT.byMessage);
    self.postMessage({ id: m.id, ok: true, result });
  } catch (err) {
    if (ctrl) Atomics.store(ctrl, COMMIT_SLOT.status, COMMIT_SLOT.byMessage);
    self.postMessage({ id: m.id, ok: false, error: (err as Error).message, code: (err as { code?: string }).code });
  } finally {
    if (ctrl) {
      Atomics.store(ctrl, COMMIT_SLOT.done, m.id);
      Atomics.notify(ctrl, COMMIT_SLOT.done);
    }
  }
};
