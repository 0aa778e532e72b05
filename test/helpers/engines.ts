/**
 * Engine gating for tests: a suite that needs PostgreSQL, Redis or NATS runs when the engine's URL
 * is set and is skipped with a printed reason when not. With REQUIRE_ENGINES=1 (CI) a missing URL
 * fails the run instead of skipping.
 */
import { existsSync } from "node:fs";
import postgres from "postgres";
import { createClient } from "redis";
import { defaultLivingMapStream } from "../../src/config.ts";

export type EngineVar = "DATABASE_URL" | "REDIS_URL" | "NATS_URL";

/** The engine URL, or `null` (after printing why the suite is skipped). Throws under REQUIRE_ENGINES=1. */
export function engineUrl(name: EngineVar, suite: string): string | null {
  const url = process.env[name];
  if (url) return url;
  if (process.env.REQUIRE_ENGINES === "1") throw new Error(`${suite}: ${name} is not set and REQUIRE_ENGINES=1`);
  console.warn(`skip ${suite}: ${name} is not set`);
  return null;
}

/** A short random suffix for per-file names (databases, key prefixes, subject prefixes). */
export function randomSuffix(): string {
  return Math.random().toString(36).slice(2, 10);
}

/**
 * Creates a throwaway schema in the database of `baseUrl` and returns a URL that works in it (the
 * schema rides in the URL as the `search_path` startup parameter, which postgres.js passes through)
 * and a `drop()`. Each test file (or test) gets its own, so files run in parallel and leave nothing
 * behind. A schema, not a database: `create database` copies the template through the WAL and
 * cost PostgreSQL ~0.14 CPU-s each, about a tenth of the whole suite's CPU on a 2-core machine.
 * Migrations already take their lock per `current_schema()`, so instances on one schema still
 * serialise and different schemas never wait for each other.
 */
export async function createTestSchema(baseUrl: string, namePrefix = "dc_test"): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `${namePrefix}_${randomSuffix()}`;
  const admin = postgres(baseUrl, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create schema ${name}`);
  } finally {
    await admin.end();
  }
  const u = new URL(baseUrl);
  u.searchParams.set("search_path", name);
  return {
    url: u.toString(),
    drop: async () => {
      const a = postgres(baseUrl, { max: 1, onnotice: () => {} });
      try {
        // Everything that used it has stopped; a connection left in a transaction must not hang the run.
        await a.unsafe(`set lock_timeout = '10s'`);
        await a.unsafe(`drop schema if exists ${name} cascade`);
      } finally {
        await a.end();
      }
    },
  };
}

/** Deletes every Redis key under `prefix` (what a test file wrote with its own key prefix). */
export async function deleteRedisKeys(url: string, prefix: string): Promise<void> {
  const c = createClient({ url });
  await c.connect();
  try {
    for await (const keys of c.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) if (keys.length) await c.del(keys);
  } finally {
    await c.close();
  }
}

/** One store a suite runs on: its environment for the city, and how to remove what it made. */
export interface StoreVariant {
  name: "sqlite" | "postgres";
  env(): Promise<{ env: Record<string, string>; drop: () => Promise<void> }>;
}

/**
 * The stores a suite runs on: the embedded SQLite always, and PostgreSQL (a throwaway schema
 * per suite) when DATABASE_URL is set — a missing one is reported by {@link engineUrl}.
 */
export function storeVariants(suite: string): StoreVariant[] {
  const base = engineUrl("DATABASE_URL", `${suite} on postgres`);
  const variants: StoreVariant[] = [{ name: "sqlite", env: async () => ({ env: {}, drop: async () => {} }) }];
  if (base) {
    variants.push({
      name: "postgres",
      env: async () => {
        const db = await createTestSchema(base);
        return { env: { DATABASE_URL: db.url }, drop: db.drop };
      },
    });
  }
  return variants;
}

/**
 * Deletes the living map's JetStream stream of a subject prefix (its consumers go with it): what
 * a test city on NATS created. Quiet when there is none.
 */
export async function deleteLivingMapStream(natsUrl: string, subjectPrefix: string): Promise<void> {
  const { connect } = await import("nats");
  const nc = await connect({ servers: natsUrl }).catch(() => null);
  if (!nc) return;
  try {
    const jsm = await nc.jetstreamManager();
    await jsm.streams.delete(defaultLivingMapStream(subjectPrefix)).catch(() => {});
  } catch {
    /* no JetStream */
  } finally {
    await nc.close();
  }
}

/**
 * The Chromium executable for browser tests (`CHROMIUM_PATH`, else Debian's `/usr/bin/chromium`),
 * or `null` after printing why the suite is skipped. Throws under REQUIRE_ENGINES=1: CI installs it.
 */
export function chromiumPath(suite: string): string | null {
  const p = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
  if (existsSync(p)) return p;
  if (process.env.REQUIRE_ENGINES === "1") throw new Error(`${suite}: no Chromium at ${p} and REQUIRE_ENGINES=1 (apt-get install chromium)`);
  console.warn(`skip ${suite}: no Chromium at ${p} (apt-get install chromium, or set CHROMIUM_PATH)`);
  return null;
}
