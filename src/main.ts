#!/usr/bin/env bun
/**
 * `daarion-city` command line (the compiled executable's entry):
 *   daarion-city [serve]            start the server (migrations are applied first)
 *   daarion-city migrate            apply pending migrations and exit
 *   daarion-city token <user_id>    print a bearer token for user_id (HS256, JWT_SECRET or DATA_DIR/jwt-secret)
 *   daarion-city simulate           publish living-map traffic on NATS_URL (demos, load)
 *   daarion-city healthcheck        is the server at HOST:PORT ready? (exit 0/1; for containers)
 * SIGTERM/SIGINT stop the server gracefully: sockets closed with 1001, writes drained, exit 0.
 */
import { resolveSecret, secretFingerprint, signToken, USER_ID_RE } from "./auth/tokens.ts";
import { openStore, startCity, VERSION } from "./bootstrap.ts";
import { ConfigError, loadConfig, type Config } from "./config.ts";
import { createLogger } from "./log.ts";
import { SettingError, storeFailure } from "./startup.ts";

const USAGE = `daarion-city ${VERSION}: the DAARION City realtime backend

usage:
  daarion-city [serve]                 start the server (applies migrations first)
  daarion-city migrate                 apply pending migrations and exit
  daarion-city token <user_id> [--ttl <seconds>] [--role admin]
                                       print a bearer token for user_id (default ttl 30 days;
                                       --role admin may change rooms and their Matrix mapping)
  daarion-city simulate [--rate <events/s>] [--duration <s>] [--nodes <n>] [--agents <n>] [--seed <n>]
                                       publish living-map traffic on NATS_URL (default 50/s, forever)
  daarion-city healthcheck             exit 0 when the server at HOST:PORT answers /readyz 200
                                       (ready or degraded), 1 otherwise (container health checks)
  daarion-city --version | --help

Configuration comes from the environment; see README "Configuration".`;

async function serve(config: Config): Promise<void> {
  const log = createLogger(config.logLevel);
  const city = await startCity(config, { log });
  log.info("city: listening", {
    url: city.url, version: VERSION, store: city.store.engine, broker: city.broker.engine, startup_ms: Math.round(performance.now()),
  });
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info("city: stopping", { signal, budget_ms: config.shutdownTimeoutMs });
    // Whatever hangs, the process is gone within the budget (plus a moment to write the log).
    setTimeout(() => {
      log.error("city: stop overran SHUTDOWN_TIMEOUT_MS; exiting now", { budget_ms: config.shutdownTimeoutMs });
      process.exit(EXIT.failure);
    }, config.shutdownTimeoutMs + 250);
    city.stop().then(
      (drained) => {
        log.info("city: stopped", { drained, steps: city.stopReport() });
        process.exit(drained ? EXIT.ok : EXIT.failure);
      },
      (err) => {
        log.error("city: stop failed", { err });
        process.exit(EXIT.failure);
      },
    );
  };
  process.on("SIGTERM", () => onSignal("SIGTERM"));
  process.on("SIGINT", () => onSignal("SIGINT"));
}

async function migrate(config: Config): Promise<void> {
  let store: Awaited<ReturnType<typeof openStore>>;
  try {
    store = await openStore(config);
  } catch (err) {
    throw storeFailure(config, err);
  }
  try {
    const applied = await store.migrate().catch((err: unknown) => {
      throw storeFailure(config, err);
    });
    console.log(applied.length ? `migrate: applied ${applied.join(", ")} on ${store.engine}` : `migrate: ${store.engine} is up to date`);
  } finally {
    await store.close();
  }
}

async function token(config: Config, args: string[]): Promise<void> {
  const userId = args[0];
  if (!userId || userId.startsWith("-")) throw new UsageError("token: give a user id, e.g. daarion-city token u_alice");
  if (!USER_ID_RE.test(userId)) throw new UsageError(`token: user id must match ${USER_ID_RE.source}, got ${JSON.stringify(userId)}`);
  let ttl = 30 * 24 * 3600;
  const i = args.indexOf("--ttl");
  if (i >= 0) {
    ttl = Number(args[i + 1]);
    if (!Number.isInteger(ttl) || ttl < 1) throw new UsageError(`token: --ttl must be a positive number of seconds, got ${JSON.stringify(args[i + 1])}`);
  }
  const r = args.indexOf("--role");
  const role = r >= 0 ? args[r + 1] : null;
  if (r >= 0 && (!role || role.startsWith("-"))) throw new UsageError("token: --role needs a value, e.g. --role admin");
  const { secret, file } = resolveSecret(config.jwtSecret, config.dataDir);
  console.log(await signToken(secret, userId, ttl, { issuer: config.jwtIssuer, audience: config.jwtAudience, role }));
  await warnOnSecretMismatch(config, secretFingerprint(secret), file ? `${file} (DATA_DIR)` : "JWT_SECRET");
}

/** The URL of the server this configuration describes, as reached from this machine. */
function localServerUrl(config: Config): string {
  const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host;
  return `http://${host.includes(":") ? `[${host}]` : host}:${config.port}`;
}

/**
 * Asks the server this configuration points at (HOST, PORT) which secret it verifies with, and
 * warns on stderr when it is not the one just used: its every request with the token would be
 * refused. Silent when no server answers within 2 s (none runs beside this command; a refused
 * connection answers at once).
 */
async function warnOnSecretMismatch(config: Config, mine: string, source: string): Promise<void> {
  const url = localServerUrl(config);
  let theirs: string | null = null;
  try {
    const res = await fetch(`${url}/auth/fingerprint`, { signal: AbortSignal.timeout(2000) });
    if (res.ok) theirs = ((await res.json()) as { fingerprint?: string | null }).fingerprint ?? null;
  } catch {
    return;
  }
  if (theirs && theirs !== mine) {
    console.error(`token: warning: signed with the secret from ${source}, but the server at ${url} verifies with another one and will refuse this token; run the command with the server's JWT_SECRET or DATA_DIR`);
  }
}

async function simulateCommand(config: Config, args: string[]): Promise<void> {
  if (!config.natsUrl) throw new UsageError("simulate: needs NATS_URL (the map hears events on NATS; a binary without NATS has only its own)");
  const opt = (name: string, fallback: number, min: number, max: number) => {
    const i = args.indexOf(`--${name}`);
    if (i < 0) return fallback;
    const v = Number(args[i + 1]);
    if (!Number.isFinite(v) || v < min || v > max) throw new UsageError(`simulate: --${name} must be a number in ${min}..${max}, got ${JSON.stringify(args[i + 1])}`);
    return v;
  };
  const rate = opt("rate", 50, 0.1, 1_000_000);
  const duration = opt("duration", 0, 0, 31_536_000);
  const nodes = opt("nodes", 8, 0, 100_000);
  const agents = opt("agents", 20, 0, 100_000);
  const seed = opt("seed", Date.now() % 2 ** 31, 0, 2 ** 31);
  console.log(`simulate: ${rate} events/s on ${config.natsUrl}${config.natsSubjectPrefix ? ` (prefix ${config.natsSubjectPrefix})` : ""}, ${nodes} nodes, ${agents} agents, seed ${seed}`);
  const { simulate } = await import("./simulate.ts"); // NATS's client only for this command
  const sent = await simulate({
    url: config.natsUrl, prefix: config.natsSubjectPrefix, rate, durationMs: duration > 0 ? duration * 1000 : null, nodes, agents, seed,
    onProgress: (n) => process.stdout.write(`\rsimulate: ${n} events sent`),
  });
  console.log(`\nsimulate: done, ${sent} events sent`);
}

/** `/readyz` of the server this configuration points at; throws (exit 1) unless it answers 200 within 2 s. */
async function healthcheck(config: Config): Promise<void> {
  const url = `${localServerUrl(config)}/readyz`;
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  const body = (await res.json().catch(() => ({}))) as { status?: string };
  if (res.status !== 200) throw new Error(`healthcheck: ${url} answered ${res.status} (${body.status ?? "?"})`);
  console.log(`healthcheck: ${body.status ?? "ok"}`);
}

class UsageError extends Error {}

async function main(argv: string[]): Promise<void> {
  const [command = "serve", ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") return void console.log(USAGE);
  if (command === "--version" || command === "-v") return void console.log(VERSION);
  if (!["serve", "migrate", "token", "simulate", "healthcheck"].includes(command)) throw new UsageError(`unknown command "${command}"\n\n${USAGE}`);
  const config = loadConfig();
  if (command === "serve") return serve(config);
  if (command === "migrate") return migrate(config);
  if (command === "simulate") return simulateCommand(config, rest);
  if (command === "healthcheck") return healthcheck(config);
  return token(config, rest);
}

/**
 * Exit codes, the same for every command (README "Exit codes"):
 * 0 done; 1 a failure at run time (or a stop that overran SHUTDOWN_TIMEOUT_MS);
 * 2 the command line is wrong; 3 a setting is invalid, or what it names cannot be used at start.
 */
export const EXIT = { ok: 0, failure: 1, usage: 2, config: 3 } as const;

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof UsageError || err instanceof SettingError) console.error(err.message);
  else console.error(`daarion-city: ${(err as Error)?.message ?? String(err)}`);
  process.exit(err instanceof UsageError ? EXIT.usage : err instanceof ConfigError || err instanceof SettingError ? EXIT.config : EXIT.failure);
});
