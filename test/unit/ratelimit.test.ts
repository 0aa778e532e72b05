/**
 * Per-user limits (rate-limiter-flexible underneath): in-process, and shared by every instance on
 * Redis, falling back to each instance's own count while Redis is unreachable.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createClient } from "redis";
import { createLimit, type RedisClient } from "../../src/engine/ratelimit.ts";
import { deleteRedisKeys, engineUrl, randomSuffix } from "../helpers/engines.ts";

describe("limits in one process", () => {
  test("allow the burst, then refuse with the seconds to wait; other users have their own budget", async () => {
    const limit = createLimit({ name: "t", ratePerSecond: 2, burst: 3 });
    expect([await limit.take("u"), await limit.take("u"), await limit.take("u")]).toEqual([0, 0, 0]);
    const wait = await limit.take("u");
    expect(wait).toBeGreaterThanOrEqual(1);
    expect(wait).toBeLessThanOrEqual(2);
    expect(await limit.take("other")).toBe(0);
  });

  test("rate 0 disables the limit", async () => {
    const limit = createLimit({ name: "off", ratePerSecond: 0, burst: 1 });
    for (let i = 0; i < 1000; i++) expect(await limit.take("u")).toBe(0);
  });
});

const url = engineUrl("REDIS_URL", "limits on redis");
describe.skipIf(!url)("limits on Redis", () => {
  const prefix = `t_${randomSuffix()}:`;
  const clients: RedisClient[] = [];
  const client = async () => {
    const c = createClient({ url: url!, disableOfflineQueue: true });
    await c.connect();
    clients.push(c as unknown as RedisClient);
    return c as unknown as RedisClient;
  };
  afterAll(async () => {
    for (const c of clients) if (c.isOpen) await c.close();
    await deleteRedisKeys(url!, prefix);
  });

  test("two instances share one budget per user", async () => {
    const [a, b] = [
      createLimit({ name: "w", ratePerSecond: 1, burst: 4, redis: { client: await client(), keyPrefix: prefix } }),
      createLimit({ name: "w", ratePerSecond: 1, burst: 4, redis: { client: await client(), keyPrefix: prefix } }),
    ];
    const got = [await a.take("u_1"), await b.take("u_1"), await a.take("u_1"), await b.take("u_1"), await a.take("u_1"), await b.take("u_1")];
    expect(got.slice(0, 4)).toEqual([0, 0, 0, 0]);
    expect(got[4]).toBeGreaterThan(0);
    expect(got[5]).toBeGreaterThan(0);
  });

  test("with Redis unreachable each instance limits on its own instead of refusing everyone", async () => {
    const c = await client();
    const limit = createLimit({ name: "down", ratePerSecond: 1, burst: 2, redis: { client: c, keyPrefix: prefix } });
    await c.close();
    expect([await limit.take("u_2"), await limit.take("u_2")]).toEqual([0, 0]);
    expect(await limit.take("u_2")).toBeGreaterThan(0);
  });
});
