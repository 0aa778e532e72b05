/**
 * Start-up failures that name the setting at fault, in one line a person can act on:
 * `DATABASE_URL: cannot connect to 127.0.0.1:1 (ECONNREFUSED)`. Credentials in a URL are never
 * repeated. The command line prints the message and exits 1 (README "Exit codes").
 */

/** A start-up failure caused by one setting (`setting` is its environment variable). */
export class SettingError extends Error {
  constructor(
    readonly setting: string,
    detail: string,
  ) {
    super(`${setting}: ${detail}`);
    this.name = "SettingError";
  }
}

/** `host:port` of a URL without its credentials, or a placeholder when it does not parse. */
export function endpointOf(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}${u.port ? `:${u.port}` : ""}`;
  } catch {
    return "(unparsable URL)";
  }
}

const NETWORK: Record<string, string> = {
  ECONNREFUSED: "cannot connect to",
  CONNECTION_REFUSED: "cannot connect to",
  ECONNRESET: "connection reset by",
  ETIMEDOUT: "timed out connecting to",
  CONNECT_TIMEOUT: "timed out connecting to",
  EHOSTUNREACH: "cannot reach",
  ENETUNREACH: "cannot reach",
  ENOTFOUND: "cannot resolve the host of",
  EAI_AGAIN: "cannot resolve the host of",
};

/**
 * Wraps the first failure of an engine reached at `url` (configured by `setting`) into a
 * {@link SettingError}: network failures as `cannot connect to host:port (CODE)`, anything the
 * server answered (a missing role or database, a refused password) with its own words.
 */
export function connectFailure(setting: string, url: string, err: unknown): SettingError {
  if (err instanceof SettingError) return err;
  const e = err as { code?: unknown; errno?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : typeof e.errno === "string" ? e.errno : null;
  const where = endpointOf(url);
  if (code && NETWORK[code]) return new SettingError(setting, `${NETWORK[code]} ${where} (${code})`);
  const message = typeof e.message === "string" ? e.message : String(err);
  return new SettingError(setting, `${where} refused: ${message}${code ? ` (${code})` : ""}`);
}

/** A store that cannot be opened or migrated at start: DATABASE_URL's server, or DATA_DIR's disk. */
export function storeFailure(config: { databaseUrl: string | null; dataDir: string }, err: unknown): SettingError {
  return config.databaseUrl
    ? connectFailure("DATABASE_URL", config.databaseUrl, err)
    : new SettingError("DATA_DIR", `cannot use ${config.dataDir}: ${(err as Error).message}`);
}
