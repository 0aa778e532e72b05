/**
 * Per-key token buckets for write rate limits (SPEC "Auth": per-user limits, 429 / WS error).
 * In-process: each instance limits on its own, so N instances allow up to N times the rate.
 */
import type { Clock } from "../clock.ts";

export interface RateLimitOptions {
  /** Tokens added per second; 0 disables the limiter. */
  ratePerSecond: number;
  /** Bucket size: writes allowed at once. */
  burst: number;
  clock: Clock;
  /** Buckets idle this long are forgotten, ms (bounds memory). Default 10 minutes. */
  idleEvictMs?: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private lastSweep: number;

  constructor(private readonly opts: RateLimitOptions) {
    this.lastSweep = opts.clock.now();
  }

  /**
   * Takes one token for `key`.
   * @returns 0 when allowed, else the seconds to wait before a token is available (≥ 1)
   */
  take(key: string): number {
    const { ratePerSecond, burst, clock } = this.opts;
    if (ratePerSecond <= 0) return 0;
    const now = clock.now();
    this.sweep(now);
    const b = this.buckets.get(key) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * ratePerSecond);
    b.at = now;
    this.buckets.set(key, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / ratePerSecond));
  }

  private sweep(now: number): void {
    const idle = this.opts.idleEvictMs ?? 600_000;
    if (now - this.lastSweep < idle) return;
    this.lastSweep = now;
    for (const [k, b] of this.buckets) if (now - b.at > idle) this.buckets.delete(k);
  }
}
