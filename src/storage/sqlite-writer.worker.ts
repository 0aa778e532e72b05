/**
 * The SQLite writer thread: owns the one write connection of the embedded store, so commits (and
 * their fsyncs under `synchronous = FULL`) never stall the event loop that fans messages out.
 * Protocol: `{ op: "open", file, synchronous }` once, then `{ id, op: <a SqliteWrites method>,
 * json: <its arguments as a JSON array> }` answered by `{ id, ok: true, result }` or
 * `{ id, ok: false, error, code }` (`code`: SQLite's, e.g. SQLITE_CONSTRAINT_UNIQUE, SQLITE_FULL);
 * `{ id, op: "close" }` last.
 */
import { Database } from "bun:sqlite";
import { configureConnection, sqliteWrites, type SqliteWrites } from "./sqlite-writes.ts";

declare const self: Worker;

let db: Database | null = null;
let writes: SqliteWrites | null = null;

self.onmessage = (e: MessageEvent) => {
  const m = e.data;
  if (m.op === "open") {
    db = new Database(m.file, { create: true, strict: true });
    configureConnection(db, m.synchronous);
    writes = sqliteWrites(db);
    return;
  }
  if (m.op === "close") {
    db?.close();
    db = null;
    self.postMessage({ id: m.id, ok: true });
    return;
  }
  try {
    if (!writes) throw new Error("sqlite writer: not open");
    const fn = writes[m.op as keyof SqliteWrites] as ((...args: unknown[]) => unknown) | undefined;
    if (!fn) throw new Error(`sqlite writer: unknown op ${m.op}`);
    const result = fn(...(JSON.parse(m.json) as unknown[]));
    self.postMessage({ id: m.id, ok: true, result });
  } catch (err) {
    self.postMessage({ id: m.id, ok: false, error: (err as Error).message, code: (err as { code?: string }).code });
  }
};
