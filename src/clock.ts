/**
 * Time source and timers for everything that expires, throttles, retries or stamps ids.
 * Injected so TTL, flush, sweep and throttle logic runs on fake time in tests (ARCHITECTURE
 * habit 4): a {@link ManualClock} is also a {@link Scheduler} whose timers fire when the test
 * advances it, never on their own.
 */
export interface Clock {
  /** Wall-clock time in milliseconds since the Unix epoch. */
  now(): number;
}

/** A timer that can be cancelled; cancelling twice, or after it fired, does nothing. */
export interface Timer {
  cancel(): void;
}

/** Runs callbacks later, on the clock it belongs to. */
export interface Scheduler {
  /** Calls `fn` once after `ms` milliseconds (0 or less: as soon as possible, never synchronously). */
  after(ms: number, fn: () => void): Timer;
  /** Calls `fn` every `ms` milliseconds until cancelled. */
  every(ms: number, fn: () => void): Timer;
}

/** The process clock (`Date.now()`). */
export const systemClock: Clock = { now: () => Date.now() };

/** Real timers (`setTimeout` / `setInterval`), unref'd so they never keep the process alive. */
export const systemScheduler: Scheduler = {
  after(ms, fn) {
    const t = setTimeout(fn, Math.max(0, ms));
    t.unref?.();
    return { cancel: () => clearTimeout(t) };
  },
  every(ms, fn) {
    const t = setInterval(fn, ms);
    t.unref?.();
    return { cancel: () => clearInterval(t) };
  },
};

interface ManualTimer {
  at: number;
  seq: number;
  every: number;
  fn: () => void;
  live: boolean;
}

/**
 * A clock that only moves when told to, and a scheduler on it: timers fire inside
 * {@link advance}, in time order, each seeing `now()` at its own due time. For tests of TTLs,
 * throttles, retries and rate limits.
 */
export class ManualClock implements Clock, Scheduler {
  private timers: ManualTimer[] = [];
  private order = 0;

  constructor(private current = Date.UTC(2026, 0, 1)) {}

  now(): number {
    return this.current;
  }

  after(ms: number, fn: () => void): Timer {
    return this.add(Math.max(0, ms), 0, fn);
  }

  every(ms: number, fn: () => void): Timer {
    return this.add(ms, Math.max(1, ms), fn);
  }

  /** Timers waiting to fire. */
  pending(): number {
    return this.timers.filter((t) => t.live).length;
  }

  /**
   * Moves the clock forward by `ms`, firing every timer that falls due on the way (timers set by
   * a firing timer fire too if they fall within the window). Awaits microtasks after each timer,
   * so promise chains a timer starts settle before the next one fires.
   */
  async advance(ms: number): Promise<void> {
    const end = this.current + ms;
    for (;;) {
      this.timers = this.timers.filter((t) => t.live);
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!due) break;
      this.current = Math.max(this.current, due.at);
      if (due.every > 0) due.at += due.every;
      else due.live = false;
      due.fn();
      await settle();
    }
    this.current = end;
    await settle();
  }

  private add(ms: number, every: number, fn: () => void): Timer {
    const t: ManualTimer = { at: this.current + ms, seq: this.order++, every, fn, live: true };
    this.timers.push(t);
    return { cancel: () => void (t.live = false) };
  }
}

/** Lets queued microtasks (and the promise chains they start) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}
