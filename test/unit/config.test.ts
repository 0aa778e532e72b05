import { describe, expect, test } from "bun:test";
import path from "node:path";
import { configTable, ConfigError, loadConfig } from "../../src/config.ts";

describe("loadConfig", () => {
  test("no environment gives the embedded defaults", () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      host: "0.0.0.0", port: 7001, databaseUrl: null, natsUrl: null, jwtSecret: null, sqliteSynchronous: "FULL", postgresCommit: "caller",
      defaultRooms: ["general", "welcome", "builders", "science", "energy"], wsMaxFrameBytes: 32768, logLevel: "info",
    });
    expect(c.dataDir).toBe(path.resolve("./data"));
  });

  test("values are parsed and typed", () => {
    const c = loadConfig({
      PORT: "8080", DATABASE_URL: "postgres://u@h:5432/db", CITY_DEFAULT_ROOMS: " general , lab-1,general ", LOG_LEVEL: "DEBUG",
      NATS_URL: "nats://a:4222,nats://b:4222", JWT_SECRET: "s".repeat(32), SQLITE_SYNCHRONOUS: "normal", POSTGRES_COMMIT: "Pool",
    });
    expect(c).toMatchObject({
      port: 8080, databaseUrl: "postgres://u@h:5432/db", defaultRooms: ["general", "lab-1"], logLevel: "debug", sqliteSynchronous: "NORMAL", postgresCommit: "pool",
    });
  });

  test("an empty CITY_DEFAULT_ROOMS means the default list (seed 000 §8)", () => {
    expect(loadConfig({ CITY_DEFAULT_ROOMS: "" }).defaultRooms).toEqual(["general", "welcome", "builders", "science", "energy"]);
  });

  const bad: [Record<string, string>, string][] = [
    [{ PORT: "x" }, 'config: PORT must be an integer in 0..65535, got "x"'],
    [{ PORT: "70000" }, 'config: PORT must be an integer in 0..65535, got "70000"'],
    [{ PORT: "80.5" }, 'config: PORT must be an integer in 0..65535, got "80.5"'],
    [{ DATABASE_URL: "mysql://h/db" }, 'config: DATABASE_URL must be a URL (postgres: or postgresql:), got "mysql://h/db"'],
    [{ DATABASE_URL: "not a url" }, 'config: DATABASE_URL must be a URL (postgres: or postgresql:), got "not a url"'],
    [{ CITY_DEFAULT_ROOMS: "general,Bad Room" }, 'config: CITY_DEFAULT_ROOMS must be slugs matching ^[a-z0-9][a-z0-9_-]{0,62}$, got "general,Bad Room"'],
    [{ JWT_SECRET: "short" }, 'config: JWT_SECRET must be at least 32 characters, got "shor…(5 chars)"'],
    [{ LOG_LEVEL: "loud" }, 'config: LOG_LEVEL must be one of debug, info, warn, error, got "loud"'],
    [{ POSTGRES_COMMIT: "thread" }, 'config: POSTGRES_COMMIT must be one of caller, pool, got "thread"'],
    [{ NATS_SUBJECT_PREFIX: "a..b" }, 'config: NATS_SUBJECT_PREFIX must be dot-separated tokens of [A-Za-z0-9_-], got "a..b"'],
    [{ JWT_PUBLIC_KEY: "abc" }, 'config: JWT_PUBLIC_KEY must be a PEM public key (-----BEGIN PUBLIC KEY-----), got "abc"'],
  ];
  for (const [env, line] of bad) {
    test(`rejects ${JSON.stringify(env)} with one clear line`, () => {
      expect(() => loadConfig(env)).toThrow(new ConfigError(line));
    });
  }

  test("the README configuration table lists every variable with its default", async () => {
    const readme = await Bun.file(path.join(import.meta.dir, "../../README.md")).text();
    for (const f of configTable()) {
      const row = readme.split("\n").find((l) => l.startsWith(`| \`${f.env}\``));
      expect({ env: f.env, row: row !== undefined }).toEqual({ env: f.env, row: true });
      if (f.fallback) expect({ env: f.env, hasDefault: row!.includes(`\`${f.fallback}\``) }).toEqual({ env: f.env, hasDefault: true });
    }
  });
});

describe("loadConfig: settings that depend on each other", () => {
  test("Agents Core transport follows AGENTS_SERVICE_URL unless chosen", () => {
    expect(loadConfig({}).agentsTransport).toBe("off");
    expect(loadConfig({ AGENTS_SERVICE_URL: "http://agents:7002" }).agentsTransport).toBe("http");
    expect(loadConfig({ AGENTS_TRANSPORT: "nats", NATS_URL: "nats://n:4222" }).agentsTransport).toBe("nats");
    expect(() => loadConfig({ AGENTS_TRANSPORT: "nats" })).toThrow(new ConfigError("config: AGENTS_TRANSPORT=nats needs NATS_URL"));
    expect(() => loadConfig({ AGENTS_TRANSPORT: "http" })).toThrow(new ConfigError("config: AGENTS_TRANSPORT=http needs AGENTS_SERVICE_URL"));
    expect(() => loadConfig({ AGENTS_SERVICE_URL: "ftp://x" })).toThrow("config: AGENTS_SERVICE_URL must be a URL (http: or https:)");
  });
});
