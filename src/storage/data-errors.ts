/**
 * True when a store refused a write for what it contains (PostgreSQL SQLSTATE classes 22 "data
 * exception" and 23 "integrity constraint"; SQLite constraint, type and size errors), rather than
 * because it is unreachable: the same write without the offending row then succeeds.
 */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  return /^2[23][0-9A-Z]{3}$/.test(code) || code.startsWith("SQLITE_CONSTRAINT") || code === "SQLITE_MISMATCH" || code === "SQLITE_TOOBIG";
}
