import { describe, expect, test } from "bun:test";
import { ManualClock } from "../../src/clock.ts";
import { RateLimiter } from "../../src/engine/ratelimit.ts";

describe("RateLimiter", () => {
  test("allows the burst, then the rate, and says how long to wait", () => {
    const clock = new ManualClock();
    const rl = new RateLimiter({ ratePerSecond: 2, burst: 3, clock });
    expect([rl.take("u"), rl.take("u"), rl.take("u")]).toEqual([0, 0, 0]);
    expect(rl.take("u")).toBe(1);
    clock.advance(499);
    expect(rl.take("u")).toBe(1);
    clock.advance(2);
    expect(rl.take("u")).toBe(0);
    expect(rl.take("other")).toBe(0);
  });

  test("refills up to the burst only", () => {
    const clock = new ManualClock();
    const rl = new RateLimiter({ ratePerSecond: 10, burst: 2, clock });
    clock.advance(60_000);
    expect([rl.take("u"), rl.take("u"), rl.take("u")]).toEqual([0, 0, 1]);
  });

  test("rate 0 disables the limit", () => {
    const rl = new RateLimiter({ ratePerSecond: 0, burst: 1, clock: new ManualClock() });
    for (let i = 0; i < 1000; i++) expect(rl.take("u")).toBe(0);
  });
});
