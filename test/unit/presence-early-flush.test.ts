/**
 * A socket's first heartbeat (its user may be coming online) is written before the tick, but never
 * more often than twice the tick rate; later heartbeats wait for the tick; the tick is armed only
 * while something is queued. On fake time.
 */
import { afterEach, expect, test } from "bun:test";
import { ManualClock } from "../../src/clock.ts";
import { MemoryPresenceManager } from "../../src/engine/presence/memory.ts";
import { PresenceTracker } from "../../src/engine/presence/presence.ts";
import { silentLogger } from "../../src/log.ts";

const FLUSH_MS = 10;
let tracker: PresenceTracker | null = null;
afterEach(async () => {
  await tracker?.close();
  tracker = null;
});

async function start(clock: ManualClock): Promise<PresenceTracker> {
  const manager = new MemoryPresenceManager({ ttlMs: 30_000, typingTtlMs: 5000 });
  tracker = new PresenceTracker({ manager, clock, scheduler: clock, log: silentLogger, ttlMs: 30_000, flushMs: FLUSH_MS, sweepMs: 0, instanceId: "i1" });
  await tracker.start();
  return tracker;
}

test("a first heartbeat is written at once when no flush went out in the last half tick", async () => {
  const clock = new ManualClock();
  const m = await start(clock);
  m.heartbeat("u_new", true);
  expect(m.stats.flushes).toBe(0);
  await clock.advance(0);
  expect(m.stats.flushes).toBe(1);
  expect(await m.isOnline("u_new")).toBe(true);
});

test("a first heartbeat right after a flush waits half a tick from it, not a whole one", async () => {
  const clock = new ManualClock();
  const m = await start(clock);
  m.heartbeat("u_a", true);
  await clock.advance(0); // flushed at t
  m.heartbeat("u_b", true);
  await clock.advance(FLUSH_MS / 2 - 1);
  expect(m.stats.flushes).toBe(1);
  expect(m.pendingCount()).toBe(1);
  await clock.advance(1);
  expect(m.stats.flushes).toBe(2);
  expect(m.pendingCount()).toBe(0);
});

test("later heartbeats wait for the tick", async () => {
  const clock = new ManualClock();
  const m = await start(clock);
  m.heartbeat("u_c", false);
  await clock.advance(FLUSH_MS - 1);
  expect(m.stats.flushes).toBe(0);
  expect(m.pendingCount()).toBe(1);
  await clock.advance(1);
  expect(m.stats.flushes).toBe(1);
});

test("a storm of first heartbeats costs at most two round trips per tick", async () => {
  const clock = new ManualClock();
  const m = await start(clock);
  for (let t = 0; t < 100; t++) {
    for (let i = 0; i < 20; i++) m.heartbeat(`u_s${t}_${i}`, true);
    await clock.advance(1);
  }
  // 100 ms of fake time at a 10 ms tick: 10 ticks, and at most one early flush per tick (plus the one at t = 0)
  expect(m.stats.flushes).toBeLessThanOrEqual(2 * 10 + 1);
  expect(m.stats.flushes).toBeGreaterThan(10);
  expect(m.pendingCount()).toBeLessThanOrEqual(20 * (FLUSH_MS / 2));
});

test("an idle tracker arms no tick: nothing queued, no timer; a write arms one, at the tick the interval would have", async () => {
  const clock = new ManualClock();
  const m = await start(clock);
  expect(clock.pending()).toBe(0);
  await clock.advance(FLUSH_MS * 3 + 4); // quiet: no flush, nothing scheduled
  expect(clock.pending()).toBe(0);
  m.heartbeat("u_idle");
  m.hold("room_city_general", "u_idle");
  expect(clock.pending()).toBe(1);
  await clock.advance(FLUSH_MS - 5); // the grid's next instant is 4·FLUSH_MS: not yet
  expect(m.stats.flushes).toBe(0);
  await clock.advance(1);
  expect(m.stats.flushes).toBe(1);
  expect(await m.roomMembers("room_city_general")).toEqual(["u_idle"]);
  expect(clock.pending()).toBe(0); // written: nothing left to wake for
  // each kind of write arms it again
  for (const write of [() => m.release("room_city_general", "u_idle"), () => m.typing("room_city_general", "u_idle"), () => m.stopTyping("room_city_general", "u_idle")]) {
    write();
    expect(clock.pending()).toBe(1);
    await clock.advance(FLUSH_MS);
    expect(clock.pending()).toBe(0);
  }
  expect(m.stats.flushes).toBe(4);
});

test("a failing write is tried again at each tick until it goes through", async () => {
  const clock = new ManualClock();
  const manager = new MemoryPresenceManager({ ttlMs: 30_000, typingTtlMs: 5000 });
  let down = true;
  const apply = manager.apply.bind(manager);
  manager.apply = (batch, now) => (down ? Promise.reject(new Error("backend down")) : apply(batch, now));
  tracker = new PresenceTracker({ manager, clock, scheduler: clock, log: silentLogger, ttlMs: 30_000, flushMs: FLUSH_MS, sweepMs: 0, instanceId: "i1" });
  await tracker.start();
  tracker.heartbeat("u_retry");
  await clock.advance(FLUSH_MS * 3);
  expect(tracker.stats.flushFailures).toBe(3);
  expect(tracker.pendingCount()).toBe(1);
  down = false;
  await clock.advance(FLUSH_MS);
  expect(tracker.stats.flushes).toBe(1);
  expect(await tracker.isOnline("u_retry")).toBe(true);
  expect(clock.pending()).toBe(0);
});
