/**
 * Shared by the end-to-end tests of one city across instances (test/e2e/instances*.test.ts and
 * nats-outage.test.ts): three compiled binaries on one PostgreSQL, Redis and NATS, and small
 * helpers over their HTTP API. Each test file is its own process, so the destructive tests run
 * beside the others rather than after them.
 */
import { afterAll, beforeAll, expect } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { binaryToken, compiledBinary, startBinary, stopBinary, type RunningBinary } from "./binary.ts";
import { TestSocket } from "./city.ts";
import { createTestSchema, deleteLivingMapStream, deleteRedisKeys, engineUrl, randomSuffix } from "./engines.ts";

export const pg = engineUrl("DATABASE_URL", "three instances");
export const redis = engineUrl("REDIS_URL", "three instances");
export const nats = engineUrl("NATS_URL", "three instances");
export const ready = Boolean(pg && redis && nats);
export const SECRET = "e2e-instances-secret-0123456789-abcdef";
export const ROOM = "room_city_general";

/** A work directory for this file's binaries, removed once all of its tests are done. */
export function workDir(): string {
  const work = mkdtempSync(path.join(tmpdir(), "dc-e2e-inst-"));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  return work;
}

/** Message frames a socket got, as seqs. */
export const seqs = (s: TestSocket) => s.frames.filter((f) => f.event === "room.message").map((f) => f.message.seq as number);
/** Asserts a run of seqs is exactly from..to, each once, in order. */
export const contiguous = (got: number[], from: number, to: number) => expect(got).toEqual(Array.from({ length: to - from + 1 }, (_, i) => from + i));

/** Posts a message; status 0 when the process is gone. */
export async function post(run: RunningBinary, token: string, body: string, room = ROOM): Promise<{ status: number; seq?: number }> {
  try {
    const res = await fetch(`${run.url}/city/rooms/${room}/messages`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ body }),
    });
    const j = (await res.json().catch(() => ({}))) as { seq?: number };
    return { status: res.status, seq: j.seq };
  } catch {
    return { status: 0 };
  }
}

/** The newest seq of {@link ROOM} as `run` reads it (0 when empty). */
export async function lastSeq(run: RunningBinary): Promise<number> {
  const page = (await (await fetch(`${run.url}/city/rooms/${ROOM}/messages?limit=1`)).json()) as { seq: number }[];
  return page[0]?.seq ?? 0;
}

/**
 * Three binaries on one PostgreSQL, Redis and NATS (own database and prefixes), started before the
 * describe's tests and stopped after them; a describe of its own per destructive test.
 */
export function useThreeInstances(work: string) {
  let drop: () => Promise<void> = async () => {};
  const prefix = `t_${randomSuffix()}`;
  let env: Record<string, string>;
  const runs: RunningBinary[] = [];
  const sockets: TestSocket[] = [];
  const open = async (run: RunningBinary, p: string) => {
    const s = await TestSocket.open(run.wsUrl + p);
    sockets.push(s);
    return s;
  };
  const tokens = new Map<string, string>();
  const token = (user: string) => {
    if (!tokens.has(user)) tokens.set(user, binaryToken(env, user));
    return tokens.get(user)!;
  };

  beforeAll(async () => {
    compiledBinary();
    const db = await createTestSchema(pg!);
    drop = db.drop;
    env = {
      DATABASE_URL: db.url, REDIS_URL: redis!, REDIS_KEY_PREFIX: `${prefix}:`, NATS_URL: nats!, NATS_SUBJECT_PREFIX: prefix, JWT_SECRET: SECRET,
      CITY_WRITE_RATE_PER_SECOND: "0", PRESENCE_TTL_SECONDS: "3", PRESENCE_SWEEP_MS: "200", PRESENCE_FLUSH_MS: "5", ROOM_POSITION_CHECK_MS: "1000",
      SHUTDOWN_TIMEOUT_MS: "3000",
    };
    for (let i = 0; i < 3; i++) runs.push(await startBinary({ ...env, DATA_DIR: mkdtempSync(path.join(work, "data-")) }, work));
  }, 120_000);

  afterAll(async () => {
    for (const s of sockets) s.close();
    for (const r of runs) if (r.proc.exitCode === null && !r.proc.killed) await stopBinary(r);
    await drop();
    await deleteRedisKeys(redis!, `${prefix}:`);
    await deleteLivingMapStream(nats!, prefix);
  });

  return { runs, open, token };
}
