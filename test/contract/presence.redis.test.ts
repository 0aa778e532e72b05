import { afterAll, describe, expect, test } from "bun:test";
import { createClient } from "redis";
import { ManualClock } from "../../src/clock.ts";
import { PresenceTracker } from "../../src/engine/presence/presence.ts";
import { RedisPresenceManager } from "../../src/engine/presence/redis.ts";
import { silentLogger } from "../../src/log.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { presenceContract, TTL_MS, TYPING_TTL_MS } from "./presence.contract.ts";

const url = engineUrl("REDIS_URL", "Presence contract: redis");
const prefix = `t_${randomSuffix()}:`;
// Scores in Redis are the tracker's clock, so the contract runs on fake time here too.
const clock = new ManualClock(Date.now());
const trackers: PresenceTracker[] = [];
let instances = 0;

async function instance(ttlMs = TTL_MS): Promise<PresenceTracker> {
  const manager = new RedisPresenceManager({ url: url!, keyPrefix: prefix, ttlMs, typingTtlMs: TYPING_TTL_MS, log: silentLogger });
  const m = new PresenceTracker({ manager, clock, scheduler: clock, log: silentLogger, ttlMs, flushMs: 0, sweepMs: 0, instanceId: `i${instances++}` });
  await m.start();
  trackers.push(m);
  return m;
}

async function cleanup(): Promise<void> {
  for (const m of trackers) await m.close();
  if (url) await deleteRedisKeys(url, prefix);
}

// Cleaned up once, after every describe in this file (the seed-key test below runs after the contract).
afterAll(cleanup);
presenceContract("redis", url ? { instance, advance: (ms) => clock.advance(ms), cleanup: async () => {} } : null);

describe.skipIf(!url)("Presence on redis: the seed's key and the scripts", () => {
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

  test("every key a script touches is one it was given, in one hash slot (Cluster-safe)", async () => {
    const m = await instance();
    m.hold("room_city_slot", "u_slot");
    m.typing("room_city_slot", "u_slot");
    m.heartbeat("u_slot");
    await m.flush();
    await m.sweep();
    const c = createClient({ url: url! });
    await c.connect();
    try {
      const keys: string[] = [];
      for await (const batch of c.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) keys.push(...batch);
      const scripted = keys.filter((k) => !k.startsWith(`${prefix}presence:user:`));
      expect(scripted.length).toBeGreaterThan(5);
      // One hash tag for all of them: Redis Cluster keeps them in one slot.
      for (const k of scripted) expect(k.startsWith(`${prefix}presence:{city}:`)).toBe(true);
      const slots = new Set(await Promise.all(scripted.map((k) => c.sendCommand(["CLUSTER", "KEYSLOT", k]).catch(() => k.slice(k.indexOf("{"), k.indexOf("}") + 1)))));
      expect(slots.size).toBe(1);
    } finally {
      await c.close();
    }
  });
});
