#!/usr/bin/env bun
/**
 * `daarion-city` command line (the compiled executable's entry):
 *   daarion-city [serve]            start the server (migrations are applied first)
 *   daarion-city migrate            apply pending migrations and exit
 *   daarion-city token <user_id>    print a bearer token for user_id (HS256, JWT_SECRET or DATA_DIR/jwt-secret)
 * SIGTERM/SIGINT stop the server gracefully: sockets closed with 1001, writes drained, exit 0.
 */
import { resolveSecret, signToken } from "./auth/tokens.ts";
import { openStore, startCity, VERSION } from "./bootstrap.ts";
import { ConfigError, loadConfig, type Config } from "./config.ts";
import { createLogger } from "./log.ts";

const USAGE = `daarion-city ${VERSION}: the DAARION City realtime backend

usage:
  daarion-city [serve]                 start the server (applies migrations first)
  daarion-city migrate                 apply pending migrations and exit
  daarion-city token <user_id> [--ttl <seconds>]
                                       print a bearer token for user_id (default ttl 30 days)
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
      process.exit(1);
    }, config.shutdownTimeoutMs + 250);
    city.stop().then(
      (drained) => {
        log.info("city: stopped", { drained, steps: city.stopReport() });
        process.exit(drained ? 0 : 1);
      },
      (err) => {
        log.error("city: stop failed", { err });
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => onSignal("SIGTERM"));
  process.on("SIGINT", () => onSignal("SIGINT"));
}

async function migrate(config: Config): Promise<void> {
  const store = openStore(config);
  try {
    const applied = await store.migrate();
    console.log(applied.length ? `migrate: applied ${applied.join(", ")} on ${store.engine}` : `migrate: ${store.engine} is up to date`);
  } finally {
    await store.close();
  }
}

async function token(config: Config, args: string[]): Promise<void> {
  const userId = args[0];
  if (!userId || userId.startsWith("-")) throw new UsageError("token: give a user id, e.g. daarion-city token u_alice");
  let ttl = 30 * 24 * 3600;
  const i = args.indexOf("--ttl");
  if (i >= 0) {
    ttl = Number(args[i + 1]);
    if (!Number.isInteger(ttl) || ttl < 1) throw new UsageError(`token: --ttl must be a positive number of seconds, got ${JSON.stringify(args[i + 1])}`);
  }
  const { secret } = resolveSecret(config.jwtSecret, config.dataDir);
  console.log(await signToken(secret, userId, ttl, { issuer: config.jwtIssuer, audience: config.jwtAudience }));
}

class UsageError extends Error {}

async function main(argv: string[]): Promise<void> {
  const [command = "serve", ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") return void console.log(USAGE);
  if (command === "--version" || command === "-v") return void console.log(VERSION);
  if (!["serve", "migrate", "token"].includes(command)) throw new UsageError(`unknown command "${command}"\n\n${USAGE}`);
  const config = loadConfig();
  if (command === "serve") return serve(config);
  if (command === "migrate") return migrate(config);
  return token(config, rest);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof UsageError) console.error(err.message);
  else console.error(`daarion-city: ${(err as Error)?.message ?? String(err)}`);
  process.exit(err instanceof UsageError ? 2 : 1);
});
