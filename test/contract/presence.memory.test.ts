import { ManualClock } from "../../src/clock.ts";
import { MemoryPresenceBackend } from "../../src/engine/presence/memory.ts";
import { PresenceManager } from "../../src/engine/presence/presence.ts";
import { silentLogger } from "../../src/log.ts";
import { presenceContract, TTL_MS, TYPING_TTL_MS } from "./presence.contract.ts";

const clock = new ManualClock();
const backend = new MemoryPresenceBackend({ ttlMs: TTL_MS, typingTtlMs: TYPING_TTL_MS });
const managers: PresenceManager[] = [];

presenceContract("memory (fake clock)", {
  instance: async () => {
    // Instances in one process share one backend, as instances share one Redis.
    const m = new PresenceManager({ backend, clock, log: silentLogger, ttlMs: TTL_MS, typingTtlMs: TYPING_TTL_MS, flushMs: 0, sweepMs: 0 });
    await m.start();
    managers.push(m);
    return m;
  },
  advance: async (ms) => clock.advance(ms),
  cleanup: async () => {
    for (const m of managers) await m.close();
  },
});
