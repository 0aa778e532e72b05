/**
 * Per-user limits (SPEC "Auth": per-user limits on writes, 429 / WS error), shared by every
 * instance when Redis is configured. The counting is rate-limiter-flexible's, not ours:
 * `RateLimiterRedis` (one atomic script per take, keys under `REDIS_KEY_PREFIX` + `rl:<name>:`)
 * with a `RateLimiterMemory` as insurance while Redis is unreachable (each instance then limits
 * on its own, rather than refusing everyone), or `RateLimiterMemory` alone on the embedded default.
 *
 * A limit of `burst` takes per window of `burst / ratePerSecond` seconds (fixed windows): the
 * sustained rate is `ratePerSecond` and at most `burst` go through at once.
 */
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import type { createClient } from "redis";

/** A connected node-redis client. */
export type RedisClient = ReturnType<typeof createClient>;

export interface LimitOptions {
  /** Names the limit in Redis keys (`rl:<name>:<user>`). */
  name: string;
  /** Sustained takes per second; 0 disables the limit. */
  ratePerSecond: number;
  /** Takes allowed at once (per window). */
  burst: number;
  /** Shared counting on this Redis (every instance sees the same budget); absent: this process only. */
  redis?: { client: RedisClient; keyPrefix: string } | null;
}

/** One per-user limit. */
export interface Limit {
  /**
   * Takes one unit for `key` (a user id).
   * @returns 0 when allowed, else the seconds until a retry can succeed (≥ 1)
   */
  take(key: string): Promise<number>;
}

/** Builds a limit; with `ratePerSecond` 0 it allows everything without counting. */
export function createLimit(o: LimitOptions): Limit {
  if (o.ratePerSecond <= 0) return { take: async () => 0 };
  const points = Math.max(1, o.burst);
  const duration = Math.max(1, Math.ceil(points / o.ratePerSecond));
  const memory = new RateLimiterMemory({ points, duration, keyPrefix: o.name });
  const limiter: RateLimiterAbstract = o.redis
    ? new RateLimiterRedis({
        storeClient: o.redis.client, useRedisPackage: true, rejectIfRedisNotReady: true, points, duration,
        keyPrefix: `${o.redis.keyPrefix}rl:${o.name}`, insuranceLimiter: memory,
      })
    : memory;
  return {
    async take(key) {
      try {
        await limiter.consume(key, 1);
        return 0;
      } catch (res) {
        if (res instanceof RateLimiterRes) return Math.max(1, Math.ceil(res.msBeforeNext / 1000));
        throw res;
      }
    },
  };
}
