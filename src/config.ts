/**
 * Configuration: the only module that reads `process.env` (ARCHITECTURE "config.ts").
 *
 * Every variable is declared once in {@link FIELDS} with its parser, default and description; the
 * README's configuration table lists the same fields (a test keeps the two in step). A bad value
 * stops the start with one line of the form `config: PORT must be an integer in 1..65535, got "x"`.
 */
import path from "node:path";
import { SLUG_RE, USER_ID_RE } from "./ids.ts";
import type { LogLevel } from "./log.ts";

/** The validated configuration every subsystem receives. Units are in the field names. */
export interface Config {
  /** HTTP and WebSocket listen address. */
  host: string;
  port: number;
  /** Directory for the embedded SQLite database and the generated JWT secret (absolute). */
  dataDir: string;
  /** PostgreSQL URL; `null` selects the embedded SQLite store. */
  databaseUrl: string | null;
  databasePoolMax: number;
  /** Where PostgreSQL message appends commit (POSTGRES_COMMIT): on the commit thread the event loop waits for, or through the pool. */
  postgresCommit: "caller" | "pool";
  /** `FULL` fsyncs every commit (acknowledged = on disk); `NORMAL` survives process crashes only. */
  sqliteSynchronous: "FULL" | "NORMAL";
  sqliteWriter: "auto" | "inline" | "thread";
  /** Slugs of the rooms created at start (seed 000 §8, seed 001). */
  defaultRooms: string[];
  /** HS256 secret; `null` means "use or create `jwt-secret` in dataDir". */
  jwtSecret: string | null;
  /** PEM SPKI public key; when set, RS256 tokens signed by its private key are accepted too. */
  jwtPublicKey: string | null;
  jwtIssuer: string | null;
  jwtAudience: string | null;
  /** Longest a token is honoured, s: the earlier of its `exp` and `iat` + this (tokens without `exp` are capped). */
  jwtMaxTtlSeconds: number;
  /** NATS URL(s); `null` selects the in-process broker (single instance). */
  natsUrl: string | null;
  /** Prepended (with a dot) to every NATS subject this process uses; isolates tests and tenants. */
  natsSubjectPrefix: string;
  /** Inbound NATS subscriptions in the bus worker thread (`true`) or on the main thread. */
  natsBusWorker: boolean;
  /** Redis URL for presence; `null` selects in-process presence (one instance). */
  redisUrl: string | null;
  /** Prepended to every Redis key this process writes (isolates tests and tenants). */
  redisKeyPrefix: string;
  /** Presence lifetime after a heartbeat, s (seed 000: 40). */
  presenceTtlSeconds: number;
  /** Heartbeats are written in one batch per tick of this length, ms. */
  presenceFlushMs: number;
  /** `false`: one round trip per heartbeat (the naive baseline the heartbeat bench compares against). */
  presenceBatching: boolean;
  /** Offline detection and room counts are recomputed this often, ms. */
  presenceSweepMs: number;
  /** A room's presence frame goes out at most this often unless its online count changed, ms (seed 003: 3 s). */
  roomPresenceThrottleMs: number;
  /** Every room's numbers are reloaded from the presence store this often, ms (0: only after broker outages). */
  presenceResyncMs: number;
  /** A `room.typing` counts this long without a refresh, s. */
  typingTtlSeconds: number;
  /** `presence.update` goes out only while at most this many local sockets listen for it (storm guard). */
  presenceUpdatesMaxAudience: number;
  /** Users who may change rooms and their Matrix mapping (besides tokens with `role: "admin"`). */
  cityAdminUsers: string[];
  /** Matrix homeserver for presence (seed 003 §8); `null`: Matrix presence is off. */
  matrixHsUrl: string | null;
  matrixAccessToken: string | null;
  /** The aggregator's bot account (`@presence_daemon:daarion.space`). */
  matrixUserId: string | null;
  /** Logs the bot in (m.login.password) when there is no token or the token is refused. */
  matrixPassword: string | null;
  matrixDeviceId: string;
  /** `/sync` long-poll timeout, ms. */
  matrixSyncTimeoutMs: number;
  /** Alias for rooms without a mapping, `{slug}` replaced (e.g. `#city_{slug}:daarion.space`); null: none. */
  matrixRoomAliasTemplate: string | null;
  /** The sync lease's lifetime, ms: a dead holder is replaced within twice this. */
  matrixLeaseTtlMs: number;
  /** Run the sync loop in its worker thread (`true`) or on the main thread. */
  matrixSyncWorker: boolean;
  /** Agents Core over HTTP: base URL of `POST /agents/{id}/invoke` (and the living map's agents-service). */
  agentsServiceUrl: string | null;
  /** Living-map upstreams (seed 004 §3.2); `null`: that source is `not_configured`. */
  spaceServiceUrl: string | null;
  microdaoServiceUrl: string | null;
  daoServiceUrl: string | null;
  usageEngineUrl: string | null;
  /** Living map reads without a token (seed 004 §7 recommends auth: off by default). */
  livingMapPublic: boolean;
  /** How often the upstreams and the city layer are read again, ms. */
  livingMapRefreshMs: number;
  /** Per upstream attempt, ms. */
  livingMapUpstreamTimeoutMs: number;
  /** An upstream's open circuit breaker lets one attempt through after this long, ms. */
  livingMapBreakerOpenMs: number;
  /** The event log (and the JetStream stream) keep this many days (seed 002: 30). */
  livingMapRetentionDays: number;
  /** How often the scene is saved to warm the next start, ms; 0 = never. */
  livingMapSnapshotIntervalMs: number;
  /** `auto`: a JetStream durable consumer when the NATS server has JetStream; `off`: core subscriptions. */
  livingMapJetstream: "auto" | "off";
  livingMapStream: string;
  livingMapConsumer: string;
  /** A durable batch not acknowledged within this long is delivered again, ms. */
  livingMapAckWaitMs: number;
  /** Larger NATS payloads are dropped (and counted), bytes. */
  livingMapMaxEventBytes: number;
  livingMapSocketsPerUser: number;
  /** Most events a reconnecting stream is sent before it gets a fresh snapshot instead. */
  livingMapRecoveryMaxEvents: number;
  /** How Second Me reaches Agents Core; `off` answers 503. */
  agentsTransport: "http" | "nats" | "off";
  /** NATS request subject for the `nats` transport (seed 000 §7: `agents.invoke`). */
  agentsInvokeSubject: string;
  secondmeAgentId: string;
  secondmeTimeoutMs: number;
  /** Messages of the conversation given to the agent with each prompt. */
  secondmeContextMessages: number;
  /** Invokes per user per minute; 0 = no limit. */
  secondmeRatePerMinute: number;
  /** Largest socket frame accepted, bytes; larger ones get `frame_too_large` and close 1009. */
  wsMaxFrameBytes: number;
  /** Send buffer per socket, bytes, above which a socket counts as a slow consumer. */
  wsMaxBufferedBytes: number;
  wsIdleTimeoutSeconds: number;
  /** Most messages replayed to a socket that reconnects with `since`. */
  roomRecoveryMaxMessages: number;
  /** How long a gap in a room's seq may wait for the broker before it is read from the store, ms. */
  roomGapGraceMs: number;
  /** How often each instance checks the rooms it serves against the store's last seq, ms. */
  roomPositionCheckMs: number;
  /** Rooms with more users online than this do not announce socket joins and leaves (O(n²) fan-out). */
  roomMembershipEventsMaxMembers: number;
  /** Per-user write budget: sustained writes per second and burst size; 0 turns the limit off. */
  writeRatePerSecond: number;
  writeBurst: number;
  httpMaxBodyBytes: number;
  /** Time allowed for a graceful stop before the process exits anyway, ms. */
  shutdownTimeoutMs: number;
  /** On SIGTERM, time between turning not-ready and closing the listener (load balancers move away), ms. */
  shutdownDrainDelayMs: number;
  logLevel: LogLevel;
}

/** Thrown for a bad value; `message` is the one line printed before exiting. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

interface Field<K extends keyof Config> {
  env: string;
  key: K;
  /** Shown in the README table. */
  type: string;
  /** Raw default (as it would be written in the environment); `undefined` = unset. */
  fallback?: string;
  doc: string;
  parse(raw: string | undefined, env: string): Config[K];
}

const fail = (env: string, rule: string, raw: string): never => {
  throw new ConfigError(`config: ${env} ${rule}, got ${JSON.stringify(raw)}`);
};

function int(min: number, max: number) {
  return (raw: string | undefined, env: string): number => {
    const s = (raw ?? "").trim();
    if (!/^-?\d+$/.test(s)) return fail(env, `must be an integer in ${min}..${max}`, raw ?? "");
    const n = Number(s);
    if (n < min || n > max) return fail(env, `must be an integer in ${min}..${max}`, s);
    return n;
  };
}

function optionalUrl(protocols: string[]) {
  return (raw: string | undefined, env: string): string | null => {
    if (raw === undefined || raw.trim() === "") return null;
    for (const part of raw.split(",")) {
      let u: URL;
      try {
        u = new URL(part.trim());
      } catch {
        return fail(env, `must be a URL (${protocols.join(" or ")})`, raw);
      }
      if (!protocols.includes(u.protocol)) return fail(env, `must be a URL (${protocols.join(" or ")})`, raw);
    }
    return raw.trim();
  };
}

/** A JetStream stream or consumer name, or empty (derived from the subject prefix later). */
function optionalNatsName(raw: string | undefined, env: string): string {
  const v = (raw ?? "").trim();
  if (v !== "" && !/^[A-Za-z0-9_-]{1,64}$/.test(v)) return fail(env, "must be 1 to 64 of [A-Za-z0-9_-]", v);
  return v;
}

function optionalString(raw: string | undefined): string | null {
  return raw === undefined || raw === "" ? null : raw;
}

function oneOf<T extends string>(values: readonly T[]) {
  return (raw: string | undefined, env: string): T => {
    const v = (raw ?? "").trim();
    const hit = values.find((x) => x.toLowerCase() === v.toLowerCase());
    return hit ?? fail(env, `must be one of ${values.join(", ")}`, raw ?? "");
  };
}

const DEFAULT_ROOMS = "general,welcome,builders,science,energy";

const FIELDS: { [K in keyof Config]: Field<K> }[keyof Config][] = [
  { env: "HOST", key: "host", type: "string", fallback: "0.0.0.0", doc: "Listen address.", parse: (r) => (r ?? "").trim() || "0.0.0.0" },
  { env: "PORT", key: "port", type: "integer 0..65535", fallback: "7001", doc: "HTTP and WebSocket port (seed 001 runs the city service on 7001); 0 picks a free port (logged at start).", parse: int(0, 65535) },
  {
    env: "DATA_DIR", key: "dataDir", type: "path", fallback: "./data",
    doc: "Where the embedded SQLite database (`city.sqlite`) and a generated `jwt-secret` live; relative to the working directory.",
    parse: (r) => path.resolve((r ?? "").trim() || "./data"),
  },
  {
    env: "DATABASE_URL", key: "databaseUrl", type: "postgres URL", doc: "PostgreSQL for rooms, messages, feed and Second Me. Unset: embedded SQLite in DATA_DIR.",
    parse: optionalUrl(["postgres:", "postgresql:"]),
  },
  { env: "DATABASE_POOL_MAX", key: "databasePoolMax", type: "integer 1..200", fallback: "10", doc: "PostgreSQL connections per process.", parse: int(1, 200) },
  {
    env: "POSTGRES_COMMIT", key: "postgresCommit", type: "caller or pool", fallback: "caller",
    doc: "Where PostgreSQL message appends commit: caller (what every room received in one turn of the event loop goes to a commit thread in one transaction, and the loop waits for its answer, at most 10 ms, then publishes at once; a slower commit is read when it comes) or pool (through the connection pool, the answer read when the event loop gets to it).",
    parse: oneOf(["caller", "pool"] as const),
  },
  {
    env: "SQLITE_SYNCHRONOUS", key: "sqliteSynchronous", type: "FULL or NORMAL", fallback: "FULL",
    doc: "Embedded store durability: FULL fsyncs each commit, NORMAL survives a process crash but not a power cut.",
    parse: oneOf(["FULL", "NORMAL"] as const),
  },
  {
    env: "SQLITE_WRITER", key: "sqliteWriter", type: "auto, inline or thread", fallback: "auto",
    doc: "Where the embedded store commits: inline on the event loop (what every room received in one turn of the loop is committed in one transaction in the next, one fsync for all, then published), or on a writer thread (a slow fsync never blocks the event loop). auto: inline while the disk's fsync is fast (a probe at start: median at most 0.5 ms), moving to the thread for good when inline writes are slow (three in a row over 10 ms, or one over 100 ms).",
    parse: oneOf(["auto", "inline", "thread"] as const),
  },
  {
    env: "CITY_DEFAULT_ROOMS", key: "defaultRooms", type: "comma-separated slugs", fallback: DEFAULT_ROOMS,
    doc: "Rooms created at start if missing, each with a welcome message (seed 000 §8, seed 001). Empty means the default list.",
    parse: (raw, env) => {
      const list = ((raw ?? "").trim() || DEFAULT_ROOMS).split(",").map((s) => s.trim()).filter(Boolean);
      for (const slug of list) if (!SLUG_RE.test(slug)) fail(env, "must be slugs matching ^[a-z0-9][a-z0-9_-]{0,62}$", raw ?? "");
      return [...new Set(list)];
    },
  },
  {
    env: "JWT_SECRET", key: "jwtSecret", type: "string, 32+ chars",
    doc: "HS256 key for bearer tokens. Unset: a random secret is created in DATA_DIR/jwt-secret (see `daarion-city token`).",
    parse: (raw, env) => {
      if (raw === undefined || raw === "") return null;
      if (raw.length < 32) return fail(env, "must be at least 32 characters", `${raw.slice(0, 4)}…(${raw.length} chars)`);
      return raw;
    },
  },
  {
    env: "JWT_PUBLIC_KEY", key: "jwtPublicKey", type: "PEM",
    doc: "SPKI public key; when set, RS256 tokens from an external issuer are accepted as well.",
    parse: (raw, env) => {
      const v = optionalString(raw?.replace(/\\n/g, "\n"));
      if (v && !v.includes("-----BEGIN PUBLIC KEY-----")) return fail(env, "must be a PEM public key (-----BEGIN PUBLIC KEY-----)", v.slice(0, 30));
      return v;
    },
  },
  { env: "JWT_ISSUER", key: "jwtIssuer", type: "string", doc: "When set, tokens must carry this `iss`.", parse: optionalString },
  { env: "JWT_AUDIENCE", key: "jwtAudience", type: "string", doc: "When set, tokens must carry this `aud`.", parse: optionalString },
  {
    env: "JWT_MAX_TTL_SECONDS", key: "jwtMaxTtlSeconds", type: "integer 60..31536000", fallback: "2592000",
    doc: "Longest a token is honoured: until the earlier of its `exp` and `iat` + this (tokens without `exp` are capped, never eternal; without `iat` the time counts from first use). Default 30 days.",
    parse: int(60, 31_536_000),
  },
  {
    env: "NATS_URL", key: "natsUrl", type: "nats URL(s)", doc: "NATS for fan-out between instances and city events. Unset: in-process broker (one instance).",
    parse: optionalUrl(["nats:", "tls:", "ws:", "wss:"]),
  },
  {
    env: "NATS_SUBJECT_PREFIX", key: "natsSubjectPrefix", type: "subject tokens", fallback: "",
    doc: "Prefix for every subject this process uses (e.g. `staging` → `staging.city.event.room_message`).",
    parse: (raw, env) => {
      const v = (raw ?? "").trim();
      if (v && !/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(v)) return fail(env, "must be dot-separated tokens of [A-Za-z0-9_-]", v);
      return v;
    },
  },
  {
    env: "NATS_BUS_WORKER", key: "natsBusWorker", type: "on or off", fallback: "on",
    doc: "`on`: every inbound NATS subscription runs in the bus worker thread, which hands the main thread batches. `off`: on the main thread (for comparison in `bench/`).",
    parse: (r, env) => oneOf(["on", "off"] as const)(r, env) === "on",
  },
  {
    env: "REDIS_URL", key: "redisUrl", type: "redis URL", doc: "Redis for presence shared by every instance. Unset: in-process presence (one instance).",
    parse: optionalUrl(["redis:", "rediss:"]),
  },
  {
    env: "REDIS_KEY_PREFIX", key: "redisKeyPrefix", type: "string", fallback: "",
    doc: "Prepended to every Redis key (e.g. `staging:` → `staging:presence:user:u_1`).",
    parse: (r) => r ?? "",
  },
  { env: "PRESENCE_TTL_SECONDS", key: "presenceTtlSeconds", type: "integer 2..3600", fallback: "40", doc: "A user is online this long after a heartbeat (seed 000: 40; clients beat every 20 s).", parse: int(2, 3600) },
  { env: "PRESENCE_FLUSH_MS", key: "presenceFlushMs", type: "integer 1..1000", fallback: "10", doc: "Heartbeats from all sockets are written in one Redis pipeline per tick of this length (no tick while nothing is queued); a socket's first heartbeat goes early, half a tick after the last write at most.", parse: int(1, 1000) },
  {
    env: "PRESENCE_BATCHING", key: "presenceBatching", type: "on or off", fallback: "on",
    doc: "`off` writes every heartbeat in its own round trip, as seed 001 did: only to measure what batching buys (`bun run bench:heartbeat`).",
    parse: (r, env) => oneOf(["on", "off"] as const)(r, env) === "on",
  },
  { env: "PRESENCE_SWEEP_MS", key: "presenceSweepMs", type: "integer 100..10000", fallback: "1000", doc: "How often offline users are detected and room counts recomputed.", parse: int(100, 10_000) },
  {
    env: "ROOM_PRESENCE_THROTTLE_MS", key: "roomPresenceThrottleMs", type: "integer 0..60000", fallback: "3000",
    doc: "A room's `room.presence` frame on the presence socket goes out at most this often, unless its online count changed (seed 003 §5.3).",
    parse: int(0, 60_000),
  },
  {
    env: "PRESENCE_UPDATES_MAX_AUDIENCE", key: "presenceUpdatesMaxAudience", type: "integer 0..1000000", fallback: "1000",
    doc: "Per-user `presence.update` frames go out only while this instance has at most this many presence sockets listening for them: a reconnect storm of n users would otherwise cost n² deliveries. Room counts always go out.",
    parse: int(0, 1_000_000),
  },
  {
    env: "PRESENCE_RESYNC_MS", key: "presenceResyncMs", type: "integer 0..600000", fallback: "30000",
    doc: "Every room's presence numbers are reloaded from the presence store this often (a lost broker publication heals); 0 = only when the broker link comes back.",
    parse: int(0, 600_000),
  },
  { env: "TYPING_TTL_SECONDS", key: "typingTtlSeconds", type: "integer 1..60", fallback: "6", doc: "A `room.typing` counts in `typing_count` this long without a refresh.", parse: int(1, 60) },
  {
    env: "CITY_ADMIN_USERS", key: "cityAdminUsers", type: "comma-separated user ids", fallback: "",
    doc: "Users who may `PATCH /city/rooms/{room_id}` and set a room's Matrix mapping; a token with the claim `role: \"admin\"` may too (`daarion-city token <user> --role admin`).",
    parse: (raw, env) => {
      const list = (raw ?? "").split(",").map((s) => s.trim()).filter(Boolean);
      for (const u of list) if (!USER_ID_RE.test(u)) fail(env, "must be user ids (u_…) separated by commas", raw ?? "");
      return list;
    },
  },
  {
    env: "MATRIX_HS_URL", key: "matrixHsUrl", type: "http(s) URL",
    doc: "Matrix homeserver whose presence and typing are folded into room presence (seed 003). Unset: Matrix presence is off. Needs MATRIX_USER_ID and MATRIX_ACCESS_TOKEN or MATRIX_PASSWORD.",
    parse: optionalUrl(["http:", "https:"]),
  },
  { env: "MATRIX_ACCESS_TOKEN", key: "matrixAccessToken", type: "string", doc: "The bot's access token (never retried once refused; see MATRIX_PASSWORD).", parse: optionalString },
  {
    env: "MATRIX_USER_ID", key: "matrixUserId", type: "Matrix user id", doc: "The bot account that syncs, joined to the city's Matrix rooms (seed 003: `@presence_daemon:daarion.space`). Never counted.",
    parse: (raw, env) => {
      const v = optionalString(raw?.trim());
      if (v && !/^@[^\s:]+:[^\s]+$/.test(v)) return fail(env, "must be a Matrix user id like @presence_daemon:daarion.space", v);
      return v;
    },
  },
  { env: "MATRIX_PASSWORD", key: "matrixPassword", type: "string", doc: "Optional: log the bot in with this password when there is no token or the homeserver refuses it (401).", parse: optionalString },
  { env: "MATRIX_DEVICE_ID", key: "matrixDeviceId", type: "string", fallback: "DAARION_CITY_PRESENCE", doc: "Device id of password logins (fixed, so logins do not pile up devices).", parse: (r) => (r ?? "").trim() || "DAARION_CITY_PRESENCE" },
  { env: "MATRIX_SYNC_TIMEOUT_MS", key: "matrixSyncTimeoutMs", type: "integer 0..120000", fallback: "30000", doc: "`/sync` long-poll timeout; the HTTP timeout is this plus 30 s.", parse: int(0, 120_000) },
  {
    env: "MATRIX_ROOM_ALIAS_TEMPLATE", key: "matrixRoomAliasTemplate", type: "alias with {slug}",
    doc: "Gives every room without a Matrix mapping an alias, resolved through the room directory (e.g. `#city_{slug}:daarion.space`). Unset: only mapped rooms are tracked.",
    parse: (raw, env) => {
      const v = optionalString(raw?.trim());
      if (v && !/^#[^\s:]*\{slug\}[^\s:]*:[^\s]+$/.test(v)) return fail(env, "must be an alias containing {slug}, like #city_{slug}:daarion.space", v);
      return v;
    },
  },
  { env: "MATRIX_LEASE_TTL_MS", key: "matrixLeaseTtlMs", type: "integer 1000..600000", fallback: "15000", doc: "One instance syncs at a time, holding a lease of this lifetime (in Redis with REDIS_URL); a dead holder is replaced within twice this.", parse: int(1000, 600_000) },
  {
    env: "MATRIX_SYNC_WORKER", key: "matrixSyncWorker", type: "on or off", fallback: "on",
    doc: "`on`: the sync loop and its aggregation run in a worker thread. `off`: on the main thread (for comparison in `bench/`).",
    parse: (r, env) => oneOf(["on", "off"] as const)(r, env) === "on",
  },
  {
    env: "AGENTS_SERVICE_URL", key: "agentsServiceUrl", type: "http(s) URL",
    doc: "agents-service / Agents Core base URL: Second Me calls `POST {AGENTS_SERVICE_URL}/agents/{SECONDME_AGENT_ID}/invoke`; the living map reads `GET /agents` and `GET /agents/metrics`. Unset (and no AGENTS_TRANSPORT): Second Me answers 503 and the map's agents source is `not_configured`.",
    parse: optionalUrl(["http:", "https:"]),
  },
  {
    env: "SPACE_SERVICE_URL", key: "spaceServiceUrl", type: "http(s) URL",
    doc: "space-service for the living map's space layer (`GET /api/space/scene`: planets and nodes). Unset: that source is `not_configured`.",
    parse: optionalUrl(["http:", "https:"]),
  },
  {
    env: "MICRODAO_SERVICE_URL", key: "microdaoServiceUrl", type: "http(s) URL",
    doc: "microdao-service for the living map's city layer items (`GET /microdaos`). Unset: `not_configured`.",
    parse: optionalUrl(["http:", "https:"]),
  },
  {
    env: "DAO_SERVICE_URL", key: "daoServiceUrl", type: "http(s) URL",
    doc: "dao-service for the living map's DAO planets (`GET /dao`, `GET /dao/proposals/summary`). Unset: `not_configured`.",
    parse: optionalUrl(["http:", "https:"]),
  },
  {
    env: "USAGE_ENGINE_URL", key: "usageEngineUrl", type: "http(s) URL",
    doc: "usage-engine for agents' 24 h usage (`GET /internal/usage/summary?period_hours=24`). Unset: `not_configured`, and usage counts from `usage.*` events.",
    parse: optionalUrl(["http:", "https:"]),
  },
  {
    env: "LIVING_MAP_PUBLIC", key: "livingMapPublic", type: "true or false", fallback: "false",
    doc: "`true` lets anyone read the living map (snapshot, entities, history, stream) without a token. Off by default, as seed 004 §7 recommends.",
    parse: (r, env) => oneOf(["true", "false"] as const)(r, env) === "true",
  },
  { env: "LIVING_MAP_REFRESH_MS", key: "livingMapRefreshMs", type: "integer 1000..3600000", fallback: "15000", doc: "How often the living map reads its upstreams and the city layer again, in the background.", parse: int(1000, 3_600_000) },
  { env: "LIVING_MAP_UPSTREAM_TIMEOUT_MS", key: "livingMapUpstreamTimeoutMs", type: "integer 100..60000", fallback: "3000", doc: "Each attempt at an upstream gives up after this long (one retry; a circuit breaker opens after 3 failures in a row).", parse: int(100, 60_000) },
  { env: "LIVING_MAP_BREAKER_OPEN_MS", key: "livingMapBreakerOpenMs", type: "integer 100..3600000", fallback: "30000", doc: "After 3 failures in a row an upstream's circuit breaker opens: no call for this long, then one attempt decides.", parse: int(100, 3_600_000) },
  { env: "LIVING_MAP_RETENTION_DAYS", key: "livingMapRetentionDays", type: "integer 1..3650", fallback: "30", doc: "Days the living map's event log (and its JetStream stream) keeps events (seed 002: 30).", parse: int(1, 3650) },
  { env: "LIVING_MAP_SNAPSHOT_INTERVAL_MS", key: "livingMapSnapshotIntervalMs", type: "integer 0..86400000", fallback: "60000", doc: "How often the scene is saved (`living_map_snapshots`) to warm the next start; 0 = never.", parse: int(0, 86_400_000) },
  {
    env: "LIVING_MAP_JETSTREAM", key: "livingMapJetstream", type: "auto or off", fallback: "auto",
    doc: "`auto`: with a NATS server that has JetStream, events go through a stream and a durable consumer, acknowledged once logged (nothing lost across restarts). `off`: core NATS subscriptions.",
    parse: oneOf(["auto", "off"] as const),
  },
  {
    env: "LIVING_MAP_STREAM", key: "livingMapStream", type: "name", fallback: "",
    doc: "The JetStream stream over the living map's eight subjects (created if absent). Empty: `LIVING_MAP`, plus `_<NATS_SUBJECT_PREFIX>` when there is a prefix.",
    parse: optionalNatsName,
  },
  {
    env: "LIVING_MAP_CONSUMER", key: "livingMapConsumer", type: "name", fallback: "",
    doc: "The durable consumer every instance shares to write the event log (created if absent). Empty: `living-map`, plus `-<NATS_SUBJECT_PREFIX>` when there is a prefix.",
    parse: optionalNatsName,
  },
  { env: "LIVING_MAP_ACK_WAIT_MS", key: "livingMapAckWaitMs", type: "integer 1000..600000", fallback: "30000", doc: "A batch not acknowledged (logged) within this long is delivered again, to whichever instance asks next.", parse: int(1000, 600_000) },
  { env: "LIVING_MAP_MAX_EVENT_BYTES", key: "livingMapMaxEventBytes", type: "integer 1024..1048576", fallback: "65536", doc: "NATS payloads larger than this are dropped, counted in /metrics and logged once per subject per minute.", parse: int(1024, 1_048_576) },
  { env: "LIVING_MAP_SOCKETS_PER_USER", key: "livingMapSocketsPerUser", type: "integer 1..1000", fallback: "5", doc: "Living map streams one user may hold open on an instance.", parse: int(1, 1000) },
  { env: "LIVING_MAP_RECOVERY_MAX_EVENTS", key: "livingMapRecoveryMaxEvents", type: "integer 1..100000", fallback: "5000", doc: "Most events a stream reconnecting with `since` is sent; beyond it, a fresh snapshot instead.", parse: int(1, 100_000) },
  {
    env: "AGENTS_TRANSPORT", key: "agentsTransport", type: "http, nats or off", fallback: "",
    doc: "How Second Me reaches Agents Core. Empty: `http` when AGENTS_SERVICE_URL is set, else `off`. `nats`: request/reply on AGENTS_INVOKE_SUBJECT (needs NATS_URL).",
    parse: (r, env) => {
      const v = (r ?? "").trim();
      return v === "" ? ("auto" as never) : oneOf(["http", "nats", "off"] as const)(v, env);
    },
  },
  {
    env: "AGENTS_INVOKE_SUBJECT", key: "agentsInvokeSubject", type: "subject", fallback: "agents.invoke",
    doc: "NATS subject of `{event:\"agents.invoke\", agent_id, payload:{input, user_id, source}}` requests (seed 000 §7).",
    parse: (r, env) => {
      const v = (r ?? "").trim();
      if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(v)) return fail(env, "must be dot-separated tokens of [A-Za-z0-9_-]", v);
      return v;
    },
  },
  { env: "SECONDME_AGENT_ID", key: "secondmeAgentId", type: "string", fallback: "ag_secondme_global", doc: "The Second Me agent in Agents Core (seed 001).", parse: (r) => (r ?? "").trim() || "ag_secondme_global" },
  { env: "SECONDME_TIMEOUT_MS", key: "secondmeTimeoutMs", type: "integer 100..600000", fallback: "30000", doc: "How long an invoke waits for Agents Core; no retry after a timeout.", parse: int(100, 600_000) },
  { env: "SECONDME_CONTEXT_MESSAGES", key: "secondmeContextMessages", type: "integer 0..100", fallback: "10", doc: "Earlier messages of the conversation sent to the agent with each prompt (seed 001: 10).", parse: int(0, 100) },
  { env: "SECONDME_RATE_PER_MINUTE", key: "secondmeRatePerMinute", type: "integer 0..10000", fallback: "10", doc: "Invokes per user per minute; over it: 429 with Retry-After. 0 = no limit.", parse: int(0, 10_000) },
  { env: "WS_MAX_FRAME_BYTES", key: "wsMaxFrameBytes", type: "integer 1024..1048576", fallback: "32768", doc: "Largest socket frame accepted; larger frames get `frame_too_large` and close 1009.", parse: int(1024, 1_048_576) },
  {
    env: "WS_MAX_BUFFERED_BYTES", key: "wsMaxBufferedBytes", type: "integer 16384..268435456", fallback: "1048576",
    doc: "Send buffer per socket above which it is a slow consumer and is closed with 4008 (reconnect with `since`).",
    parse: int(16_384, 268_435_456),
  },
  { env: "WS_IDLE_TIMEOUT_SECONDS", key: "wsIdleTimeoutSeconds", type: "integer 8..960", fallback: "120", doc: "Sockets silent this long (no frame, no pong) are closed; the server pings before that.", parse: int(8, 960) },
  { env: "ROOM_RECOVERY_MAX_MESSAGES", key: "roomRecoveryMaxMessages", type: "integer 1..10000", fallback: "1000", doc: "Most messages replayed to a socket reconnecting with `since`.", parse: int(1, 10_000) },
  {
    env: "ROOM_GAP_GRACE_MS", key: "roomGapGraceMs", type: "integer 0..5000", fallback: "20",
    doc: "A room message that arrives before the one it follows waits this long for the broker to bring the missing one, then it is read from the store.",
    parse: int(0, 5000),
  },
  {
    env: "ROOM_POSITION_CHECK_MS", key: "roomPositionCheckMs", type: "integer 500..30000", fallback: "10000",
    doc: "How often each instance compares the last seq it delivered in each room it serves with the store's (one query), and delivers what a lost broker message kept from it.",
    parse: int(500, 30_000),
  },
  {
    env: "ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS", key: "roomMembershipEventsMaxMembers", type: "integer 0..1000000", fallback: "200",
    doc: "Sockets joining or leaving a room announce `room.join` / `room.leave` while the room has at most this many users online; above it (every join would go to everyone) they do not. 0 = never.",
    parse: int(0, 1_000_000),
  },
  { env: "CITY_WRITE_RATE_PER_SECOND", key: "writeRatePerSecond", type: "integer 0..100000", fallback: "5", doc: "Sustained writes (messages, rooms) per user per second; 0 = no limit.", parse: int(0, 100_000) },
  { env: "CITY_WRITE_BURST", key: "writeBurst", type: "integer 1..100000", fallback: "20", doc: "Writes a user may make at once before the rate applies.", parse: int(1, 100_000) },
  { env: "HTTP_MAX_BODY_BYTES", key: "httpMaxBodyBytes", type: "integer 1024..16777216", fallback: "65536", doc: "Largest HTTP request body; larger ones get 413.", parse: int(1024, 16_777_216) },
  { env: "SHUTDOWN_TIMEOUT_MS", key: "shutdownTimeoutMs", type: "integer 100..60000", fallback: "9000", doc: "Whole stop budget on SIGTERM/SIGINT: whatever hangs, the process exits within it.", parse: int(100, 60_000) },
  {
    env: "SHUTDOWN_DRAIN_DELAY_MS", key: "shutdownDrainDelayMs", type: "integer 0..60000", fallback: "0",
    doc: "On SIGTERM the instance first turns not ready (`/readyz` 503) and keeps serving this long, so a load balancer stops sending it new clients; then it closes. Set it to your balancer's probe interval (e.g. 5000).",
    parse: int(0, 60_000),
  },
  { env: "LOG_LEVEL", key: "logLevel", type: "debug, info, warn or error", fallback: "info", doc: "Least severe log level written.", parse: oneOf(["debug", "info", "warn", "error"] as const) },
];

/** The living map's JetStream stream when LIVING_MAP_STREAM is empty: one per subject prefix, so cities (or test runs) on one NATS never share it. */
export function defaultLivingMapStream(subjectPrefix: string): string {
  const tag = subjectPrefix.replace(/\./g, "_");
  return tag ? `LIVING_MAP_${tag}` : "LIVING_MAP";
}

/** The durable consumer when LIVING_MAP_CONSUMER is empty (per subject prefix, like the stream). */
export function defaultLivingMapConsumer(subjectPrefix: string): string {
  const tag = subjectPrefix.replace(/\./g, "_");
  return tag ? `living-map-${tag}` : "living-map";
}

/**
 * Reads and validates the configuration.
 * @param env the environment to read (default `process.env`)
 * @throws ConfigError with a one-line `config: …` message on the first bad value
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const out: Partial<Record<keyof Config, unknown>> = {};
  for (const f of FIELDS) {
    const raw = env[f.env];
    const given = raw === undefined || raw === "" ? f.fallback : raw;
    out[f.key] = (f.parse as (r: string | undefined, e: string) => unknown)(given, f.env);
  }
  const c = out as Config;
  // Settings that depend on each other.
  if ((c.agentsTransport as string) === "auto") c.agentsTransport = c.agentsServiceUrl ? "http" : "off";
  if (c.agentsTransport === "http" && !c.agentsServiceUrl) throw new ConfigError("config: AGENTS_TRANSPORT=http needs AGENTS_SERVICE_URL");
  if (c.agentsTransport === "nats" && !c.natsUrl) throw new ConfigError("config: AGENTS_TRANSPORT=nats needs NATS_URL");
  // One stream and consumer per subject prefix, so cities (or test runs) on one NATS never share them.
  if (!c.livingMapStream) c.livingMapStream = defaultLivingMapStream(c.natsSubjectPrefix);
  if (!c.livingMapConsumer) c.livingMapConsumer = defaultLivingMapConsumer(c.natsSubjectPrefix);
  if (c.matrixHsUrl && !c.matrixUserId) throw new ConfigError("config: MATRIX_HS_URL needs MATRIX_USER_ID (the bot account that syncs)");
  if (c.matrixHsUrl && !c.matrixAccessToken && !c.matrixPassword) throw new ConfigError("config: MATRIX_HS_URL needs MATRIX_ACCESS_TOKEN or MATRIX_PASSWORD");
  if (c.shutdownDrainDelayMs >= c.shutdownTimeoutMs) {
    throw new ConfigError(`config: SHUTDOWN_DRAIN_DELAY_MS (${c.shutdownDrainDelayMs}) must be shorter than SHUTDOWN_TIMEOUT_MS (${c.shutdownTimeoutMs})`);
  }
  return c;
}

/** The declared variables, for the README table and its test: `[env, type, default, doc]`. */
export function configTable(): { env: string; type: string; fallback: string | undefined; doc: string }[] {
  return FIELDS.map((f) => ({ env: f.env, type: f.type, fallback: f.fallback, doc: f.doc }));
}
