/**
 * Per-key serial execution: work for one key (a user) runs one at a time, in arrival order on an
 * instance, and, with Redis, one at a time across every instance (Second Me: each reply follows its
 * prompt, whatever instance the user's requests land on).
 *
 * {@link LocalSerialQueue} chains promises per key in this process. {@link RedisSerialQueue} adds a
 * Redis lease per key (`SET NX PX`, released by a compare-and-delete script, so a lease that
 * expired and was taken by another instance is never deleted by its old holder); a crashed
 * holder's lease lapses after `leaseMs`.
 */
import type { RedisClient } from "./ratelimit.ts";
import { AppError } from "./errors.ts";

export interface SerialQueue {
  /**
   * Runs `fn` when every earlier call for `key` has finished (on every instance, with Redis).
   * @throws AppError `rate_limited` when the key stayed busy for longer than the queue waits;
   *   whatever `fn` throws
   */
  run<T>(key: string, fn: () => Promise<T>): Promise<T>;
}

/** One process: a promise chain per key. */
export class LocalSerialQueue implements SerialQueue {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(fn);
    this.tails.set(key, run);
    void run.catch(() => {}).finally(() => {
      if (this.tails.get(key) === run) this.tails.delete(key);
    });
    return run;
  }
}

const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

export interface RedisSerialQueueOptions {
  client: RedisClient;
  /** Key prefix of the leases (`<prefix><key>`). */
  keyPrefix: string;
  /** A lease outlives a crashed holder by this much, ms (longer than `fn` may take). */
  leaseMs: number;
  /** How long a call waits for the lease before giving up, ms. */
  waitMs: number;
  /** How often a waiting call retries, ms. */
  pollMs?: number;
}

/** Every instance: a local chain first (no polling among one instance's calls), then a Redis lease. */
export class RedisSerialQueue implements SerialQueue {
  private readonly local = new LocalSerialQueue();

  constructor(private readonly o: RedisSerialQueueOptions) {}

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.local.run(key, async () => {
      const lease = this.o.keyPrefix + key;
      const token = crypto.randomUUID();
      const deadline = Date.now() + this.o.waitMs;
      for (;;) {
        // Redis unreachable: keep serving with this instance's order only (the local chain).
        const got = await this.o.client.set(lease, token, { NX: true, PX: this.o.leaseMs }).catch(() => "OK");
        if (got === "OK") break;
        if (Date.now() >= deadline) {
          throw new AppError("rate_limited", "an earlier request of yours is still being answered; retry when it is", Math.ceil(this.o.leaseMs / 1000));
        }
        await Bun.sleep(this.o.pollMs ?? 25);
      }
      try {
        return await fn();
      } finally {
        await this.o.client.eval(RELEASE, { keys: [lease], arguments: [token] }).catch(() => {});
      }
    });
  }
}
