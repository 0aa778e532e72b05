/**
 * A named lease: at most one holder at a time across every instance sharing the engine, renewed by
 * its holder, free for another once it lapses (the Matrix sync loop runs only on the holder: issue
 * "one syncing instance"; ARCHITECTURE "Workers").
 *
 * Times are epoch ms from the caller's clock, so tests run on fake time: the Redis lease keeps the
 * expiry in its value and compares it with the `now` it is given (the key's own PX only collects
 * garbage, well after the lease lapsed). One contract suite (`test/contract/lease.contract.ts`) runs
 * on {@link MemoryLease} and {@link RedisLease}.
 */
import type { RedisClient } from "./ratelimit.ts";

export interface Lease {
  /**
   * Takes the lease for `holder` until `now + ttlMs` when it is free or lapsed, or renews it when
   * `holder` has it.
   * @returns true when `holder` holds it after the call
   * @throws when the engine cannot be reached (the caller should treat the lease as lost)
   */
  acquire(holder: string, ttlMs: number, now: number): Promise<boolean>;
  /** Gives the lease up if `holder` has it (another instance can take it at once). */
  release(holder: string): Promise<void>;
  /** Who holds the lease at `now`, or null. */
  holder(now: number): Promise<string | null>;
}

/** In-process lease (one instance, or several in one test process). */
export class MemoryLease implements Lease {
  private current: { holder: string; until: number } | null = null;

  async acquire(holder: string, ttlMs: number, now: number): Promise<boolean> {
    if (this.current && this.current.until > now && this.current.holder !== holder) return false;
    this.current = { holder, until: now + ttlMs };
    return true;
  }

  async release(holder: string): Promise<void> {
    if (this.current?.holder === holder) this.current = null;
  }

  async holder(now: number): Promise<string | null> {
    return this.current && this.current.until > now ? this.current.holder : null;
  }
}

/** Value `holder|until`; taken when absent, lapsed, or already ours. ARGV: holder, now, until, gc px. */
const ACQUIRE = `
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, '|', 1, true)
  local holder, untilMs = string.sub(v, 1, sep - 1), tonumber(string.sub(v, sep + 1))
  if holder ~= ARGV[1] and untilMs > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[3], 'PX', ARGV[4])
return 1
`;

const RELEASE = `
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then redis.call('DEL', KEYS[1]) end
return 0
`;

/** A lease in one Redis key (`<prefix>lease:<name>`), shared by every instance on that Redis. */
export class RedisLease implements Lease {
  private readonly key: string;

  constructor(
    private readonly client: RedisClient,
    keyPrefix: string,
    name: string,
  ) {
    this.key = `${keyPrefix}lease:${name}`;
  }

  async acquire(holder: string, ttlMs: number, now: number): Promise<boolean> {
    if (holder.includes("|")) throw new Error("lease: a holder name cannot contain |");
    const got = await this.client.eval(ACQUIRE, { keys: [this.key], arguments: [holder, String(now), String(now + ttlMs), String(ttlMs + 60_000)] });
    return Number(got) === 1;
  }

  async release(holder: string): Promise<void> {
    await this.client.eval(RELEASE, { keys: [this.key], arguments: [holder] });
  }

  async holder(now: number): Promise<string | null> {
    const v = await this.client.get(this.key);
    if (!v) return null;
    const sep = v.indexOf("|");
    return Number(v.slice(sep + 1)) > now ? v.slice(0, sep) : null;
  }
}
