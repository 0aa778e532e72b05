/**
 * The presence contract (src/engine/presence/presence.ts), written once and run on the in-process
 * backend (fake clock) and on Redis (real clock, short TTLs): presence.memory.test.ts and
 * presence.redis.test.ts call {@link presenceContract}.
 */
import { afterAll, describe, expect, test } from "bun:test";
import type { PresenceManager, PresenceStatus, RoomCounts } from "../../src/engine/presence/presence.ts";

export const TTL_MS = 1500;
export const TYPING_TTL_MS = 600;

export interface PresenceHarness {
  /** A manager for a new instance; instances from one harness share state (like one Redis). */
  instance(): Promise<PresenceManager>;
  /** Lets `ms` pass (fake clock: instantly; Redis: sleeps). */
  advance(ms: number): Promise<void>;
  cleanup(): Promise<void>;
}

export function presenceContract(name: string, harness: PresenceHarness | null): void {
  describe.skipIf(harness === null)(`Presence contract: ${name}`, () => {
    const h = harness!;
    let n = 0;
    const uid = (s: string) => `u_${s}_${n++}`;
    const room = (s: string) => `room_city_${s}${n++}`;
    /** What an instance reports; instances share state, so only `users` of the test are kept. */
    const record = (m: PresenceManager, ...users: string[]) => {
      const transitions: [string, PresenceStatus][] = [];
      const counts: Map<string, RoomCounts>[] = [];
      m.onTransition((u, s) => users.includes(u) && transitions.push([u, s]));
      m.onRoomCounts((c) => counts.push(new Map(c)));
      return { transitions, counts };
    };
    afterAll(() => h.cleanup());

    test("a heartbeat makes the user online once; the seed-001 helpers see it", async () => {
      const m = await h.instance();
      const u = uid("hb");
      const seen = record(m, u);
      m.heartbeat(u);
      await m.flush();
      expect(await m.isOnline(u)).toBe(true);
      expect(await m.getAllOnline()).toContain(u);
      expect(await m.getOnlineCount()).toBeGreaterThanOrEqual(1);
      m.heartbeat(u);
      await m.refreshTtl(u);
      await m.setOnline(u);
      expect(seen.transitions).toEqual([[u, "online"]]);
      expect(await m.isOnline(uid("never"))).toBe(false);
    });

    test("heartbeats from many users are written in one round trip per flush", async () => {
      const m = await h.instance();
      const before = m.stats.flushes;
      const users = Array.from({ length: 500 }, () => uid("bulk"));
      for (const u of users) for (let i = 0; i < 3; i++) m.heartbeat(u);
      expect(m.pendingCount()).toBe(500);
      await m.flush();
      expect(m.stats.flushes - before).toBe(1);
      for (const u of users.slice(0, 5)) expect(await m.isOnline(u)).toBe(true);
    });

    test("without heartbeats the user goes offline once, after the TTL; a new heartbeat is a new online", async () => {
      const m = await h.instance();
      const u = uid("off");
      const seen = record(m, u);
      m.heartbeat(u);
      await m.flush();
      await h.advance(TTL_MS / 2);
      await m.sweep();
      expect(seen.transitions).toEqual([[u, "online"]]);
      await h.advance(TTL_MS / 2 + 100);
      await m.sweep();
      await m.sweep();
      expect(seen.transitions).toEqual([[u, "online"], [u, "offline"]]);
      expect(await m.isOnline(u)).toBe(false);
      m.heartbeat(u);
      await m.flush();
      expect(seen.transitions).toEqual([[u, "online"], [u, "offline"], [u, "online"]]);
    });

    test("two instances report each transition exactly once between them", async () => {
      const [a, b] = [await h.instance(), await h.instance()];
      const u = uid("twice");
      const [sa, sb] = [record(a, u), record(b, u)];
      a.heartbeat(u);
      b.heartbeat(u);
      await Promise.all([a.flush(), b.flush()]);
      await h.advance(TTL_MS + 100);
      await Promise.all([a.sweep(), b.sweep()]);
      await Promise.all([a.sweep(), b.sweep()]);
      const all = [...sa.transitions, ...sb.transitions];
      expect(all.sort()).toEqual([[u, "offline"], [u, "online"]]);
    });

    test("a user counts in a room while held and online; exact across instances", async () => {
      const [a, b] = [await h.instance(), await h.instance()];
      const seen = record(a);
      const r = room("count");
      const [u1, u2, u3] = [uid("r1"), uid("r2"), uid("r3")];
      expect(a.hold(r, u1)).toBe(true);
      expect(a.hold(r, u1)).toBe(false); // second local socket
      expect(b.hold(r, u1)).toBe(true); // same user on another instance
      b.hold(r, u2);
      a.hold(r, u3); // held but never heartbeats: not counted
      a.heartbeat(u1);
      b.heartbeat(u2);
      await Promise.all([a.flush(), b.flush()]);
      await Promise.all([a.sweep(), b.sweep()]);
      expect(a.roomCount(r)).toBe(2);
      expect(b.roomCount(r)).toBe(2);
      expect(await a.roomMembers(r)).toEqual([u1, u2].sort());
      expect(seen.counts.at(-1)!.get(r)).toEqual({ online: 2, typing: 0 });

      expect(a.release(r, u1)).toBe(false); // one local socket left
      expect(a.release(r, u1)).toBe(true);
      await a.sweep();
      expect(a.roomCount(r)).toBe(2); // b still holds u1
      b.release(r, u1);
      await b.flush();
      await a.sweep();
      expect(a.roomCount(r)).toBe(1);
      b.release(r, u2);
      a.release(r, u3);
      await Promise.all([a.flush(), b.flush()]);
      await a.sweep();
      expect(a.roomCount(r)).toBe(0);
      expect(seen.counts.at(-1)!.get(r)).toEqual({ online: 0, typing: 0 });
      expect(a.release(r, u1)).toBe(false); // nothing held: no-op
    });

    test("holds are refreshed before they lapse while the user keeps heartbeating", async () => {
      const m = await h.instance();
      const r = room("long");
      const u = uid("long");
      m.hold(r, u);
      for (let i = 0; i < 4; i++) {
        m.heartbeat(u);
        await m.flush();
        await m.sweep();
        expect({ i, count: m.roomCount(r) }).toEqual({ i, count: 1 });
        await h.advance(TTL_MS / 2);
      }
    });

    test("typing counts for the typing lifetime", async () => {
      const m = await h.instance();
      const r = room("typing");
      const [u1, u2] = [uid("t1"), uid("t2")];
      m.typing(r, u1);
      m.typing(r, u2);
      m.typing(r, u2);
      await m.flush();
      await m.sweep();
      expect(m.snapshot().get(r)).toEqual({ online: 0, typing: 2 });
      await h.advance(TYPING_TTL_MS / 2);
      m.typing(r, u1);
      await m.flush();
      await h.advance(TYPING_TTL_MS / 2 + 100);
      await m.sweep();
      expect(m.snapshot().get(r)).toEqual({ online: 0, typing: 1 });
      await h.advance(TYPING_TTL_MS);
      await m.sweep();
      expect(m.snapshot().get(r)).toBeUndefined();
    });
  });
}
