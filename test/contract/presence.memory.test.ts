import { ManualClock } from "../../src/clock.ts";
import { MemoryPresenceManager } from "../../src/engine/presence/memory.ts";
import { PresenceTracker } from "../../src/engine/presence/presence.ts";
import { silentLogger } from "../../src/log.ts";
import { presenceContract, TTL_MS, TYPING_TTL_MS } from "./presence.contract.ts";

const clock = new ManualClock();
const manager = new MemoryPresenceManager({ ttlMs: TTL_MS, typingTtlMs: TYPING_TTL_MS });
const trackers: PresenceTracker[] = [];
let instances = 0;

presenceContract("memory (fake clock)", {
  instance: async () => {
    // Trackers in one process share one manager, as instances share one Redis.
    const m = new PresenceTracker({ manager, clock, scheduler: clock, log: silentLogger, ttlMs: TTL_MS, flushMs: 0, sweepMs: 0, instanceId: `i${instances++}` });
    await m.start();
    trackers.push(m);
    return m;
  },
  advance: (ms) => clock.advance(ms),
  cleanup: async () => {
    for (const m of trackers) await m.close();
  },
});
