/**
 * The lease contract (src/engine/lease.ts), run on the in-process lease and on Redis, on fake time:
 * one holder at a time, renewal by the holder, takeover once it lapses, release.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createClient } from "redis";
import { MemoryLease, RedisLease, type Lease } from "../../src/engine/lease.ts";
import type { RedisClient } from "../../src/engine/ratelimit.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";

const redisUrl = engineUrl("REDIS_URL", "Lease contract: redis");
const prefix = `t_${randomSuffix()}:`;
let client: RedisClient | null = null;
afterAll(async () => {
  if (client) await client.close();
  if (redisUrl) await deleteRedisKeys(redisUrl, prefix);
});

const variants: { name: string; make: ((name: string) => Promise<Lease>) | null }[] = [
  { name: "memory", make: async () => new MemoryLease() },
  {
    name: "redis",
    make: redisUrl
      ? async (name) => {
          if (!client) {
            client = createClient({ url: redisUrl }) as unknown as RedisClient;
            await client.connect();
          }
          return new RedisLease(client, prefix, name);
        }
      : null,
  },
];

for (const v of variants) {
  describe.skipIf(v.make === null)(`Lease contract: ${v.name}`, () => {
    const T0 = Date.UTC(2026, 0, 1);
    let n = 0;
    const lease = () => v.make!(`l${n++}`);

    test("one holder at a time; the holder renews; another takes it only after it lapses", async () => {
      const l = await lease();
      expect(await l.acquire("a", 1000, T0)).toBe(true);
      expect(await l.acquire("b", 1000, T0 + 10)).toBe(false);
      expect(await l.holder(T0 + 10)).toBe("a");
      expect(await l.acquire("a", 1000, T0 + 900)).toBe(true); // renewed until T0 + 1900
      expect(await l.acquire("b", 1000, T0 + 1500)).toBe(false);
      expect(await l.acquire("b", 1000, T0 + 1901)).toBe(true);
      expect(await l.holder(T0 + 1901)).toBe("b");
      expect(await l.acquire("a", 1000, T0 + 1902)).toBe(false);
    });

    test("release frees it at once, but only for its holder", async () => {
      const l = await lease();
      expect(await l.acquire("a", 60_000, T0)).toBe(true);
      await l.release("b");
      expect(await l.acquire("b", 60_000, T0 + 1)).toBe(false);
      await l.release("a");
      expect(await l.holder(T0 + 1)).toBe(null);
      expect(await l.acquire("b", 60_000, T0 + 2)).toBe(true);
    });

    test("a lapsed lease has no holder", async () => {
      const l = await lease();
      expect(await l.acquire("a", 1000, T0)).toBe(true);
      expect(await l.holder(T0 + 999)).toBe("a");
      expect(await l.holder(T0 + 1000)).toBe(null);
    });
  });
}
