/**
 * Time source for everything that expires, throttles or stamps ids.
 * Injected so TTL and throttle logic can run on a fake clock in tests (ARCHITECTURE habit 4).
 */
export interface Clock {
  /** Wall-clock time in milliseconds since the Unix epoch. */
  now(): number;
}

/** The process clock (`Date.now()`). */
export const systemClock: Clock = { now: () => Date.now() };

/** A clock that only moves when told to; for tests of TTLs, throttles and rate limits. */
export class ManualClock implements Clock {
  constructor(private current = Date.UTC(2026, 0, 1)) {}
  now(): number {
    return this.current;
  }
  /** Moves the clock forward by `ms` milliseconds. */
  advance(ms: number): void {
    this.current += ms;
  }
}
