import { afterAll, describe, expect, test } from "bun:test";
import { createClient } from "redis";
import { systemClock } from "../../src/clock.ts";
import { PresenceManager } from "../../src/engine/presence/presence.ts";
import { RedisPresenceBackend } from "../../src/engine/presence/redis.ts";
import { silentLogger } from "../../src/log.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { presenceContract, TTL_MS, TYPING_TTL_MS } from "./presence.contract.ts";

const url = engineUrl("REDIS_URL", "Presence contract: redis");
const prefix = `t_${randomSuffix()}:`;
const managers: PresenceManager[] = [];
let instances = 0;

async function instance(ttlMs = TTL_MS): Promise<PresenceManager> {
  const backend = new RedisPresenceBackend({ url: url!, keyPrefix: prefix, ttlMs, typingTtlMs: TYPING_TTL_MS, log: silentLogger });
  const m = new PresenceManager({ backend, clock: systemClock, log: silentLogger, ttlMs, typingTtlMs: TYPING_TTL_MS, flushMs: 0, sweepMs: 0, instanceId: `i${instances++}` });
  await m.start();
  managers.push(m);
  return m;
}

async function cleanup(): Promise<void> {
  for (const m of managers) await m.close();
  if (url) await deleteRedisKeys(url, prefix);
}

// Cleaned up once, after every describe in this file (the seed-key test below runs after the contract).
afterAll(cleanup);
presenceContract("redis", url ? { instance, advance: (ms) => Bun.sleep(ms), cleanup: async () => {} } : null);

describe.skipIf(!url)("Presence on redis: the seed's key", () => {
  test("a heartbeat sets presence:user:<id> = online with the configured TTL (seed 000 §3)", async () => {
    const m = await instance(40_000);
    m.heartbeat("u_seedkey");
    await m.flush();
    const c = createClient({ url: url! });
    await c.connect();
    try {
      expect(await c.get(`${prefix}presence:user:u_seedkey`)).toBe("online");
      const ttl = await c.ttl(`${prefix}presence:user:u_seedkey`);
      expect(ttl).toBeGreaterThanOrEqual(30);
      expect(ttl).toBeLessThanOrEqual(40);
    } finally {
      await c.close();
    }
  });
});
