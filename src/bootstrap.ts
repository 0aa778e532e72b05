/**
 * startCity(config): the composition root. It builds the engines the configuration names (each
 * chosen once, here), the services and the server, in dependency order, recording each part in
 * one {@link Lifecycle}; `stop()` undoes them in reverse, each under a deadline. `main.ts` runs it
 * for `serve`; tests run several in one process on port 0.
 */
import path from "node:path";
import type { Server } from "bun";
import { createApp, type App } from "./app.ts";
import { resolveSecret, secretFingerprint, signToken, TokenVerifier } from "./auth/tokens.ts";
import { systemClock, systemScheduler, type Clock, type Scheduler } from "./clock.ts";
import type { Config } from "./config.ts";
import type { Broker } from "./engine/broker/broker.ts";
import { MemoryBroker } from "./engine/broker/memory.ts";
import { CLOSE } from "./engine/errors.ts";
import { Hub } from "./engine/hub.ts";
import { MemoryPresenceManager } from "./engine/presence/memory.ts";
import { PresenceTracker, type PresenceManager } from "./engine/presence/presence.ts";
import { createLimit, type RedisClient } from "./engine/ratelimit.ts";
import { MemoryLease, RedisLease } from "./engine/lease.ts";
import { LocalSerialQueue, RedisSerialQueue } from "./engine/serial.ts";
import type { SocketData, SocketRoute } from "./engine/sockets.ts";
import { RoomStreams } from "./engine/streams.ts";
import { Lifecycle, type StepReport } from "./lifecycle.ts";
import type { Logger } from "./log.ts";
import { CityService } from "./modules/city/service.ts";
import { roomSocketRoute } from "./modules/city/socket.ts";
import { LivingMapService } from "./modules/living-map/service.ts";
import { livingMapSocketRoute } from "./modules/living-map/socket.ts";
import type { ReadinessReport } from "./modules/ops/index.ts";
import { InlineSyncHost, WorkerSyncHost } from "./modules/matrix/host.ts";
import { MatrixPresenceService } from "./modules/matrix/service.ts";
import { PresenceService } from "./modules/presence/service.ts";
import { presenceSocketRoute } from "./modules/presence/socket.ts";
import { AgentsClient, HttpAgentsTransport, NatsAgentsTransport } from "./modules/secondme/agents.ts";
import { SecondMeService } from "./modules/secondme/service.ts";
import { EventLoopDelay, WriteLatency } from "./engine/latency.ts";
import { createMetrics } from "./plugins/metrics.ts";
import { serveCity } from "./server.ts";
import { SettingError, storeFailure } from "./startup.ts";
import { webRoutes } from "./web/routes.ts";
import { guardStore } from "./storage/guard.ts";
import { SqliteStore } from "./storage/sqlite.ts";
import type { Store } from "./storage/store.ts";
import pkg from "../package.json" with { type: "json" };

export const VERSION: string = pkg.version;

/** Broker subject telling every instance that a room was created or changed (room lists, the Matrix mapping). */
export const ROOMS_CHANGED_SUBJECT = "city.rooms.changed";
/** Lifetime of a token from the page's local sign-in (seconds). */
export const LOCAL_TOKEN_TTL_SECONDS = 8 * 3600;

export interface StartOptions {
  log: Logger;
  clock?: Clock;
  scheduler?: Scheduler;
  /** Use this broker instead of the configured one (tests link instances with a MemoryNetwork). */
  broker?: Broker;
  /** Use this store instead of the configured one (tests give a store with a capped size); it is closed on stop. */
  store?: Store;
  /** Listen port; overrides `config.port` (0 picks a free one). */
  port?: number;
}

export interface CityInstance {
  /** `http://host:port` the server listens on. */
  readonly url: string;
  readonly port: number;
  readonly server: Server<SocketData>;
  readonly app: App;
  readonly store: Store;
  readonly broker: Broker;
  readonly hub: Hub;
  readonly streams: RoomStreams;
  readonly city: CityService;
  readonly presence: PresenceTracker;
  readonly livingMap: LivingMapService;
  /** The Matrix presence aggregator (null without MATRIX_HS_URL). */
  readonly matrix: MatrixPresenceService | null;
  /** Names of the lifecycle steps in start order (they stop in reverse). */
  readonly steps: string[];
  /** True from the moment a stop begins (`/readyz` answers 503 from then on). */
  isStopping(): boolean;
  /**
   * Graceful stop, SPEC/ARCHITECTURE "Lifecycle": not ready, drain delay, stop listening, drain
   * writes, close sockets with 1001, close services and engines; everything within
   * SHUTDOWN_TIMEOUT_MS. Resolves `true` when every step finished in its budget.
   */
  stop(): Promise<boolean>;
  /** The last stop's per-step report (empty before a stop). */
  stopReport(): StepReport[];
}

// The client libraries of PostgreSQL, Redis and NATS are loaded only when their URL is set: on the
// embedded default they would be ~90 ms of a ~230 ms start (node-redis alone ~50 ms).

/**
 * The store the configuration names: PostgreSQL with DATABASE_URL, else SQLite in DATA_DIR.
 * @param log where SQLite says it moved its writes to the writer thread (SQLITE_WRITER=auto), and
 *   PostgreSQL that its commit thread failed (POSTGRES_COMMIT=caller)
 * @throws Error when the store cannot be opened (a bad DATA_DIR, a malformed URL)
 */
export async function openStore(config: Config, log?: Logger): Promise<Store> {
  if (!config.databaseUrl) {
    return new SqliteStore({
      file: path.join(config.dataDir, "city.sqlite"), synchronous: config.sqliteSynchronous, writer: config.sqliteWriter,
      onWriterMoved: (why) => log?.warn(`store: ${why}`),
    });
  }
  const { PostgresStore } = await import("./storage/postgres.ts");
  return new PostgresStore({
    url: config.databaseUrl, poolMax: config.databasePoolMax, commit: config.postgresCommit,
    onCommitThreadFailed: (why) => log?.error(`store: ${why}`),
  });
}

/** The presence manager the configuration names: Redis with REDIS_URL, else in-process. */
export async function openPresenceManager(config: Config, log: Logger): Promise<PresenceManager> {
  const ttlMs = config.presenceTtlSeconds * 1000;
  const typingTtlMs = config.typingTtlSeconds * 1000;
  if (!config.redisUrl) return new MemoryPresenceManager({ ttlMs, typingTtlMs });
  const { RedisPresenceManager } = await import("./engine/presence/redis.ts");
  return new RedisPresenceManager({ url: config.redisUrl, keyPrefix: config.redisKeyPrefix, ttlMs, typingTtlMs, log });
}

/** The broker the configuration names: NATS with NATS_URL, else in-process. */
async function openBroker(config: Config, log: Logger): Promise<Broker> {
  if (!config.natsUrl) return new MemoryBroker();
  const { NatsBroker } = await import("./engine/broker/nats.ts");
  return new NatsBroker({ url: config.natsUrl, subjectPrefix: config.natsSubjectPrefix, log, busWorker: config.natsBusWorker });
}

/** Resolves to `p`'s value, or rejects with `what` timed out after `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Starts one city instance.
 * @throws Error naming the engine when one cannot be reached or migrated; whatever was started is stopped
 */
export async function startCity(config: Config, opts: StartOptions): Promise<CityInstance> {
  const { log } = opts;
  const clock = opts.clock ?? systemClock;
  const scheduler = opts.scheduler ?? systemScheduler;
  const life = new Lifecycle(log, clock, scheduler);
  try {
    // Start-up failures name the setting at fault (README "Exit codes").
    let rawStore: Store;
    try {
      rawStore = opts.store ?? (await openStore(config, log));
    } catch (err) {
      throw storeFailure(config, err);
    }
    life.add({ name: "store", stop: () => rawStore.close(), timeoutMs: 3000 });
    const applied = await rawStore.migrate().catch((err: unknown) => {
      throw storeFailure(config, err);
    });
    const store = guardStore(rawStore, log);
    if (applied.length) log.info("store: migrations applied", { engine: store.engine, versions: applied });
    if (rawStore instanceof SqliteStore) log.info("store: sqlite commits", { writer: rawStore.writerMode, setting: config.sqliteWriter, synchronous: config.sqliteSynchronous });

    let secret: ReturnType<typeof resolveSecret>;
    try {
      secret = resolveSecret(config.jwtSecret, config.dataDir);
    } catch (err) {
      throw new SettingError("DATA_DIR", `cannot keep the JWT secret in ${config.dataDir} (or set JWT_SECRET): ${(err as Error).message}`);
    }
    if (secret.generated) log.info("auth: generated a JWT secret", { file: secret.file });
    const verifier = await TokenVerifier.create({
      secret: secret.secret, publicKeyPem: config.jwtPublicKey, issuer: config.jwtIssuer, audience: config.jwtAudience, clock,
      maxTtlSeconds: config.jwtMaxTtlSeconds,
    });

    const broker: Broker = opts.broker ?? (await openBroker(config, log));
    await broker.start();
    life.add({ name: "broker", stop: () => broker.close(), timeoutMs: 2000 });

    // Shared per-user limits and Second Me's per-user order (Redis), when there is a Redis.
    let redis: RedisClient | null = null;
    if (config.redisUrl) {
      const { createClient } = await import("./redis-client.ts");
      const client = createClient({
        url: config.redisUrl, disableOfflineQueue: true,
        socket: { connectTimeout: 3000, reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 1000) },
      });
      client.on("error", () => {}); // the presence manager logs Redis trouble; this client falls back quietly
      await Promise.race([client.connect().catch(() => {}), Bun.sleep(3000)]);
      redis = client as unknown as RedisClient;
      life.add({ name: "redis (limits)", stop: () => (client.isOpen ? client.close().catch(() => client.destroy()) : undefined), timeoutMs: 1000 });
    }

    const hub = new Hub({ log, maxBufferedBytes: config.wsMaxBufferedBytes, clock, scheduler });
    const presence = new PresenceTracker({
      manager: await openPresenceManager(config, log), clock, scheduler, log, ttlMs: config.presenceTtlSeconds * 1000,
      flushMs: config.presenceFlushMs, sweepMs: config.presenceSweepMs, batching: config.presenceBatching,
    });
    await presence.start();
    life.add({ name: "presence", stop: () => presence.close(), timeoutMs: 2000 });

    const writeLimit = createLimit({
      name: "writes", ratePerSecond: config.writeRatePerSecond, burst: config.writeBurst, redis: redis && { client: redis, keyPrefix: config.redisKeyPrefix },
    });
    // Streams need the city's history, the city needs streams: the history is read through `city`.
    let city: CityService | null = null;
    const streams = new RoomStreams({
      broker, hub, log, scheduler, gapGraceMs: config.roomGapGraceMs, positionIntervalMs: config.roomPositionCheckMs,
      history: { lastSeqs: (ids) => city!.history.lastSeqs(ids), read: (id, q) => city!.history.read(id, q) },
    });
    // Where a message's time goes, and how late the event loop runs (both in /metrics).
    const writeLatency = new WriteLatency();
    const loopDelay = new EventLoopDelay();
    loopDelay.start();
    life.add({ name: "event loop monitor", stop: () => loopDelay.stop() });
    city = new CityService({
      store, streams, broker, writeLimit, clock, log, membershipEventsMaxMembers: config.roomMembershipEventsMaxMembers,
      occupancy: { count: (roomId) => presence.roomCount(roomId), holders: (roomId) => presence.roomUsersAtLeast(roomId) },
      onRoomCreated: () => {
        roomsChanged();
        broker.publish(ROOMS_CHANGED_SUBJECT, "{}");
      },
      onPublished: (n) => metrics.messages.inc(n),
      stages: writeLatency,
    });
    streams.start();
    life.add({ name: "room streams", stop: () => streams.close() });
    const presenceService = new PresenceService({
      presence, hub, streams, broker, store, clock, scheduler, log, throttleMs: config.roomPresenceThrottleMs,
      membershipEventsMaxMembers: config.roomMembershipEventsMaxMembers, updatesMaxAudience: config.presenceUpdatesMaxAudience,
      resyncMs: config.presenceResyncMs,
      matrixPresence: () => matrix?.presenceState() ?? null,
      matrixRoomOf: (roomId) => matrix?.matrixRoomOf(roomId) ?? { id: null, alias: null },
    });
    presenceService.start();
    life.add({ name: "presence service", stop: () => presenceService.close() });

    // Matrix presence (seed 003): one instance syncs (a lease), its people go into the presence store.
    let matrix: MatrixPresenceService | null = null;
    if (config.matrixHsUrl && config.matrixUserId) {
      const m = new MatrixPresenceService({
        settings: {
          hsUrl: config.matrixHsUrl, userId: config.matrixUserId, accessToken: config.matrixAccessToken, password: config.matrixPassword,
          deviceId: config.matrixDeviceId, syncTimeoutMs: config.matrixSyncTimeoutMs, aliasTemplate: config.matrixRoomAliasTemplate, leaseTtlMs: config.matrixLeaseTtlMs,
        },
        tracker: presence, broker, store, lease: redis ? new RedisLease(redis, config.redisKeyPrefix, "matrix-sync") : new MemoryLease(),
        createHost: () => (config.matrixSyncWorker ? new WorkerSyncHost() : new InlineSyncHost()),
        instanceId: presence.instanceId, presenceTtlMs: config.presenceTtlSeconds * 1000, typingTtlMs: config.typingTtlSeconds * 1000,
        clock, scheduler, log, onActivity: (roomId) => presenceService.noteActivity(roomId),
      });
      m.start();
      matrix = m;
      life.add({ name: "matrix presence", stop: () => m.close(), timeoutMs: 3000 });
    }
    // A room created or changed anywhere: room lists and the Matrix mapping are read again.
    const roomsChanged = () => {
      presenceService.roomsChanged();
      matrix?.roomsChanged();
    };
    const unsubscribeRooms = broker.subscribe(ROOMS_CHANGED_SUBJECT, () => roomsChanged());
    life.add({ name: "room changes", stop: () => unsubscribeRooms() });
    const livingMap = new LivingMapService({
      store, broker, hub, presence, log, clock, scheduler, version: VERSION,
      urls: { space: config.spaceServiceUrl, agents: config.agentsServiceUrl, microdao: config.microdaoServiceUrl, dao: config.daoServiceUrl, usage: config.usageEngineUrl },
      refreshMs: config.livingMapRefreshMs, upstreamTimeoutMs: config.livingMapUpstreamTimeoutMs, breakerOpenMs: config.livingMapBreakerOpenMs, retentionDays: config.livingMapRetentionDays,
      snapshotIntervalMs: config.livingMapSnapshotIntervalMs, jetstream: config.livingMapJetstream === "auto", streamName: config.livingMapStream,
      consumerName: config.livingMapConsumer, ackWaitMs: config.livingMapAckWaitMs, maxEventBytes: config.livingMapMaxEventBytes,
      recoveryMax: config.livingMapRecoveryMaxEvents,
    });
    await livingMap.start();
    life.add({ name: "living map", stop: () => livingMap.close(), timeoutMs: 3000 });
    const metrics = createMetrics({ hub, presence, streams, broker, presenceEvents: presenceService.stats, livingMap, matrix: matrix ? () => matrix!.report() : undefined });
    writeLatency.register(metrics.registry);
    metrics.registry.registerMetric(loopDelay.histogram);

    const agents =
      config.agentsTransport === "off"
        ? null
        : new AgentsClient(
            config.agentsTransport === "http" ? new HttpAgentsTransport(config.agentsServiceUrl!) : new NatsAgentsTransport(broker, config.agentsInvokeSubject),
            config.secondmeTimeoutMs,
            log,
          );
    const secondme = new SecondMeService({
      store, agents, agentId: config.secondmeAgentId, contextMessages: config.secondmeContextMessages, clock, log,
      limit: createLimit({
        name: "secondme", ratePerSecond: config.secondmeRatePerMinute / 60, burst: Math.max(1, config.secondmeRatePerMinute),
        redis: redis && { client: redis, keyPrefix: config.redisKeyPrefix },
      }),
      serial: redis
        ? new RedisSerialQueue({
            client: redis, keyPrefix: `${config.redisKeyPrefix}lock:secondme:`, leaseMs: config.secondmeTimeoutMs + 10_000, waitMs: config.secondmeTimeoutMs * 2,
          })
        : new LocalSerialQueue(),
    });
    const created = await city.ensureDefaultRooms(config.defaultRooms);
    if (created.length) log.info("city: default rooms created", { slugs: created });
    roomsChanged();
    void livingMap.refreshCity();

    let stopping = false;
    const readiness = async (): Promise<ReadinessReport> => {
      const engines: ReadinessReport["engines"] = {};
      try {
        // A write, not just a read: a store that answers but cannot write (disk full) is not ready.
        await within(store.probeWrite(), 1000, "store");
        const trouble = store.writeTrouble();
        engines.store = trouble ? { engine: store.engine, state: "down", detail: trouble } : { engine: store.engine, state: "up" };
      } catch (err) {
        // The cause's words, not the client-facing "unavailable": this report is for operators.
        const cause = ((err as { cause?: unknown }).cause ?? err) as Error;
        engines.store = { engine: store.engine, state: "down", detail: cause?.message ?? String(cause) };
      }
      engines.broker = { engine: broker.engine, state: broker.state(), ...(broker.detail ? { detail: broker.detail() } : {}) };
      engines.presence = { engine: presence.engine, state: presence.state() };
      let matrixDown = false;
      let matrixReport: Record<string, unknown> | undefined;
      if (matrix) {
        const r = matrix.report();
        matrixDown = !(r.state === "syncing" || r.state === "following");
        const age = r.lastSyncAgeSeconds === null ? "no sync yet" : `last sync ${r.lastSyncAgeSeconds} s ago`;
        engines.matrix = { engine: "matrix", state: matrixDown ? "down" : "up", detail: `${r.leader ? "leader" : "follower"}, ${r.state}, ${age}, presence ${r.presence}` };
        matrixReport = { ...r };
      }
      const degraded = broker.state() !== "up" || presence.state() !== "up" || matrixDown;
      const status = stopping || engines.store.state === "down" ? "not_ready" : degraded ? "degraded" : "ready";
      return matrixReport ? { status, engines, matrix: matrixReport } : { status, engines };
    };

    const admins = new Set(config.cityAdminUsers);
    const app = createApp({
      city, secondme, verifier, readiness, log, version: VERSION, metrics, livingMap, livingMapPublic: config.livingMapPublic,
      isAdmin: (p) => p.role === "admin" || admins.has(p.userId), jwtFingerprint: secretFingerprint(secret.secret),
    });
    const routes = [
      roomSocketRoute({
        city, streams, presence, verifier, log, maxFrameBytes: config.wsMaxFrameBytes, recoveryMax: config.roomRecoveryMaxMessages,
        membershipEventsMaxMembers: config.roomMembershipEventsMaxMembers,
      }),
      presenceSocketRoute({ service: presenceService, presence, verifier, log, maxFrameBytes: config.wsMaxFrameBytes }),
      livingMapSocketRoute({
        map: livingMap, verifier, log, isPublic: config.livingMapPublic, socketsPerUser: config.livingMapSocketsPerUser, maxFrameBytes: config.wsMaxFrameBytes,
      }),
    ] as unknown as SocketRoute<SocketData>[];
    // Local sign-in on the page: only with the secret this data directory holds (no JWT_SECRET).
    const localToken = secret.file ? async (userId: string) => {
      const ttl = Math.min(LOCAL_TOKEN_TTL_SECONDS, config.jwtMaxTtlSeconds);
      const token = await signToken(secret.secret, userId, ttl, { issuer: config.jwtIssuer, audience: config.jwtAudience });
      return { token, expires_at: new Date(clock.now() + ttl * 1000).toISOString() };
    } : null;
    const web = webRoutes({ localToken });
    let server: Server<SocketData>;
    try {
      server = serveCity({ config, port: opts.port, app, routes, hub, log, isShuttingDown: () => stopping, web });
    } catch (err) {
      throw new SettingError("PORT", `cannot listen on ${config.host}:${opts.port ?? config.port}: ${(err as Error).message}`);
    }
    hub.attach(server as Server<unknown>);
    hub.start();
    life.add({ name: "hub", stop: () => hub.close() });
    // The stop order, read bottom-up: not ready → drain delay → listener → writes → sockets.
    let inFlight: Promise<void> = Promise.resolve();
    life.add({
      name: "sockets and in-flight requests",
      stop: async () => {
        hub.closeAll(CLOSE.goingAway, "server shutting down; reconnect (to another instance)");
        await inFlight;
      },
      timeoutMs: 3000,
    });
    life.add({ name: "queued writes", stop: () => city!.writer.drain(), timeoutMs: 3000 });
    life.add({
      name: "listener",
      stop: () => {
        inFlight = server.stop(false); // no new connections; open ones carry on
      },
    });
    life.add({
      name: "readiness",
      stop: async () => {
        stopping = true;
        if (config.shutdownDrainDelayMs > 0) await new Promise<void>((r) => scheduler.after(config.shutdownDrainDelayMs, r));
      },
      timeoutMs: config.shutdownDrainDelayMs + 100,
    });

    let report: StepReport[] = [];
    const stop = async (): Promise<boolean> => {
      stopping = true;
      report = await life.stop(config.shutdownTimeoutMs);
      // Whatever is still open after the budget (a request that never ends) is cut now.
      void server.stop(true);
      return report.every((r) => r.outcome === "ok");
    };

    return {
      url: `http://${config.host === "0.0.0.0" ? "127.0.0.1" : config.host}:${server.port}`,
      port: server.port!,
      server, app, store, broker, hub, streams, city, presence, livingMap, matrix,
      steps: life.names(),
      isStopping: () => stopping,
      stop,
      stopReport: () => report,
    };
  } catch (err) {
    await life.stop(config.shutdownTimeoutMs);
    throw err;
  }
}
