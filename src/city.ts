/**
 * startCity(config): builds the engines named by the configuration (each chosen once, here), the
 * services and the server, in dependency order, and returns a handle whose `stop()` undoes them in
 * reverse. `main.ts` runs it for `serve`; tests run several in one process on port 0.
 */
import path from "node:path";
import type { Server } from "bun";
import { createApp, type App } from "./app.ts";
import { resolveSecret, TokenVerifier } from "./auth/tokens.ts";
import { systemClock, type Clock } from "./clock.ts";
import type { Config } from "./config.ts";
import type { Broker } from "./engine/broker/broker.ts";
import { MemoryBroker } from "./engine/broker/memory.ts";
import { NatsBroker } from "./engine/broker/nats.ts";
import { CLOSE } from "./engine/errors.ts";
import { Hub } from "./engine/hub.ts";
import { MemoryPresenceBackend } from "./engine/presence/memory.ts";
import { PresenceManager, type PresenceBackend } from "./engine/presence/presence.ts";
import { RedisPresenceBackend } from "./engine/presence/redis.ts";
import { RateLimiter } from "./engine/ratelimit.ts";
import type { SocketData, SocketRoute } from "./engine/sockets.ts";
import type { Logger } from "./log.ts";
import { CityService } from "./modules/city/service.ts";
import { AgentsClient, HttpAgentsTransport, NatsAgentsTransport } from "./modules/secondme/agents.ts";
import { SecondMeService } from "./modules/secondme/service.ts";
import { roomSocketRoute } from "./modules/city/socket.ts";
import type { ReadinessReport } from "./modules/ops/index.ts";
import { PresenceService } from "./modules/presence/service.ts";
import { presenceSocketRoute } from "./modules/presence/socket.ts";
import { createMetrics } from "./plugins/metrics.ts";
import { serveCity } from "./server.ts";
import { PostgresStore } from "./storage/postgres.ts";
import { SqliteStore } from "./storage/sqlite.ts";
import type { Store } from "./storage/store.ts";
import pkg from "../package.json" with { type: "json" };

export const VERSION: string = pkg.version;

export interface StartOptions {
  log: Logger;
  clock?: Clock;
  /** Use this broker instead of the configured one (tests link instances with a MemoryNetwork). */
  broker?: Broker;
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
  readonly city: CityService;
  readonly presence: PresenceManager;
  /**
   * Graceful stop: refuse new connections, finish queued writes, close sockets with 1001, wait
   * for in-flight requests, close engines. Resolves `true` when everything drained in time.
   */
  stop(): Promise<boolean>;
}

/** The store the configuration names: PostgreSQL with DATABASE_URL, else SQLite in DATA_DIR. */
export function openStore(config: Config): Store {
  return config.databaseUrl
    ? new PostgresStore({ url: config.databaseUrl, poolMax: config.databasePoolMax })
    : new SqliteStore({ file: path.join(config.dataDir, "city.sqlite"), synchronous: config.sqliteSynchronous });
}

/** The presence backend the configuration names: Redis with REDIS_URL, else in-process. */
export function openPresenceBackend(config: Config, log: Logger, ttlMs: number, typingTtlMs: number): PresenceBackend {
  return config.redisUrl
    ? new RedisPresenceBackend({ url: config.redisUrl, keyPrefix: config.redisKeyPrefix, ttlMs, typingTtlMs, log })
    : new MemoryPresenceBackend({ ttlMs, typingTtlMs });
}

/**
 * Starts one city instance.
 * @throws Error naming the engine when one cannot be reached or migrated; whatever was opened is closed
 */
export async function startCity(config: Config, opts: StartOptions): Promise<CityInstance> {
  const { log } = opts;
  const clock = opts.clock ?? systemClock;
  const opened: (() => Promise<void> | void)[] = [];
  const undo = async () => {
    for (const f of opened.reverse()) await f();
  };
  try {
    const store = openStore(config);
    opened.push(() => store.close());
    const applied = await store.migrate();
    if (applied.length) log.info("store: migrations applied", { engine: store.engine, versions: applied });

    const secret = resolveSecret(config.jwtSecret, config.dataDir);
    if (secret.generated) log.info("auth: generated a JWT secret", { file: secret.file });
    const verifier = await TokenVerifier.create({
      secret: secret.secret, publicKeyPem: config.jwtPublicKey, issuer: config.jwtIssuer, audience: config.jwtAudience,
    });

    const broker: Broker =
      opts.broker ??
      (config.natsUrl ? new NatsBroker({ url: config.natsUrl, subjectPrefix: config.natsSubjectPrefix, log }) : new MemoryBroker());
    await broker.start();
    opened.push(() => broker.close());

    const hub = new Hub({ broker, log, maxBufferedBytes: config.wsMaxBufferedBytes });
    const ttlMs = config.presenceTtlSeconds * 1000;
    const typingTtlMs = config.typingTtlSeconds * 1000;
    const presence = new PresenceManager({
      backend: openPresenceBackend(config, log, ttlMs, typingTtlMs), clock, log, ttlMs, typingTtlMs,
      flushMs: config.presenceFlushMs, sweepMs: config.presenceSweepMs, batching: config.presenceBatching,
    });
    await presence.start();
    opened.push(() => presence.close());
    const presenceService = new PresenceService({
      presence, hub, broker, store, clock, log, throttleMs: config.roomPresenceThrottleMs, membershipEventsMaxMembers: config.roomMembershipEventsMaxMembers,
      updatesMaxAudience: config.presenceUpdatesMaxAudience,
    });
    presenceService.start();
    opened.push(() => presenceService.close());
    const writeLimiter = new RateLimiter({ ratePerSecond: config.writeRatePerSecond, burst: config.writeBurst, clock });
    const occupancy = { count: (roomId: string) => presence.roomCount(roomId) };
    const metrics = createMetrics({ hub, presence });
    const city = new CityService({
      store, hub, broker, occupancy, writeLimiter, clock, log, onRoomCreated: () => presenceService.roomsChanged(), onPublished: (n) => metrics.messages.inc(n),
    });
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
      limiter: new RateLimiter({ ratePerSecond: config.secondmeRatePerMinute / 60, burst: Math.max(1, config.secondmeRatePerMinute), clock }),
    });
    const created = await city.ensureDefaultRooms(config.defaultRooms);
    if (created.length) log.info("city: default rooms created", { slugs: created });

    let shuttingDown = false;
    const readiness = async (): Promise<ReadinessReport> => {
      const engines: ReadinessReport["engines"] = {};
      try {
        await store.ping();
        engines.store = { engine: store.engine, state: "up" };
      } catch (err) {
        engines.store = { engine: store.engine, state: "down", detail: (err as Error).message };
      }
      engines.broker = { engine: broker.engine, state: broker.state() };
      engines.presence = { engine: presence.engine, state: presence.state() };
      const degraded = broker.state() !== "up" || presence.state() !== "up";
      const status = shuttingDown || engines.store.state === "down" ? "not_ready" : degraded ? "degraded" : "ready";
      return { status, engines };
    };

    const app = createApp({ city, secondme, verifier, readiness, log, version: VERSION, metrics });
    const routes = [
      roomSocketRoute({
        city, hub, presence, verifier, log, maxFrameBytes: config.wsMaxFrameBytes, recoveryMax: config.roomRecoveryMaxMessages,
        membershipEventsMaxMembers: config.roomMembershipEventsMaxMembers,
      }),
      presenceSocketRoute({ service: presenceService, presence, hub, verifier, log, maxFrameBytes: config.wsMaxFrameBytes }),
    ] as unknown as SocketRoute<SocketData>[];
    const server = serveCity({ config, port: opts.port, app, routes, log, isShuttingDown: () => shuttingDown });
    hub.attach(server as Server<unknown>);
    hub.start();
    opened.push(() => {
      hub.close();
      void server.stop(true);
    });

    const stop = async (): Promise<boolean> => {
      if (shuttingDown) return true;
      shuttingDown = true;
      const deadline = Date.now() + config.shutdownTimeoutMs;
      const stopped = server.stop(false); // no new connections; open ones carry on
      await withDeadline(city.writer.drain(), deadline);
      hub.closeAll(CLOSE.goingAway, "server shutting down");
      const drained = await withDeadline(stopped, deadline);
      if (!drained) await server.stop(true);
      hub.close();
      presenceService.close();
      await presence.close();
      await broker.close();
      await store.close();
      return drained;
    };

    return {
      url: `http://${config.host === "0.0.0.0" ? "127.0.0.1" : config.host}:${server.port}`,
      port: server.port!,
      server,
      app,
      store,
      broker,
      hub,
      city,
      presence,
      stop,
    };
  } catch (err) {
    await undo();
    throw err;
  }
}

/** Resolves `true` if `p` settles before `deadline` (epoch ms), `false` otherwise. */
async function withDeadline(p: Promise<unknown>, deadline: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), Math.max(0, deadline - Date.now()))));
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
