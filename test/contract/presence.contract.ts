/**
 * The presence contract (src/engine/presence/presence.ts), written once and run on every
 * PresenceManager (in-process and Redis), both on fake time: scores are the tracker's clock, so
 * a test advances time instead of sleeping. presence.memory.test.ts and presence.redis.test.ts
 * call {@link presenceContract}. Every test uses its own users and rooms.
 */
import { afterAll, describe, expect, test } from "bun:test";
import type { Membership, PresenceStatus, PresenceTracker, RoomCounts, Transition } from "../../src/engine/presence/presence.ts";

export const TTL_MS = 1500;
export const TYPING_TTL_MS = 600;

export interface PresenceHarness {
  /** A tracker for a new instance; trackers from one harness share state (like one Redis). */
  instance(): Promise<PresenceTracker>;
  /** Moves the shared fake clock forward. */
  advance(ms: number): Promise<void>;
  cleanup(): Promise<void>;
}

export function presenceContract(name: string, harness: PresenceHarness | null): void {
  describe.skipIf(harness === null)(`Presence contract: ${name}`, () => {
    const h = harness!;
    const tag = Math.random().toString(36).slice(2, 7);
    let n = 0;
    const uid = (s: string) => `u_${s}_${tag}_${n++}`;
    const room = (s: string) => `room_city_${s}-${tag}-${n++}`;
    /** What an instance reports about the test's own users and rooms. */
    const record = (m: PresenceTracker, users: string[] = [], rooms: string[] = []) => {
      const transitions: [string, PresenceStatus, string[]][] = [];
      const memberships: [string, string, "join" | "leave", number][] = [];
      const counts: [string, Omit<RoomCounts, "version">, "local" | "remote"][] = [];
      m.onTransition((t: Transition, s) => users.includes(t.userId) && transitions.push([t.userId, s, t.rooms]));
      m.onMembership((x: Membership, kind) => rooms.includes(x.roomId) && memberships.push([x.roomId, x.userId, kind, x.holders]));
      m.onRoomCounts((changed, origin) => {
        for (const [r, c] of changed) if (rooms.includes(r)) counts.push([r, { online: c.online, typing: c.typing, typingUsers: c.typingUsers, holders: c.holders }, origin]);
      });
      return { transitions, memberships, counts };
    };
    const numbers = (m: PresenceTracker, r: string) => {
      const c = m.snapshot().get(r);
      return c && { online: c.online, typing: c.typing, typingUsers: c.typingUsers, holders: c.holders };
    };
    afterAll(() => h.cleanup());

    test("a heartbeat makes the user online once; the seed-001 helpers see it", async () => {
      const m = await h.instance();
      const u = uid("hb");
      const seen = record(m, [u]);
      m.heartbeat(u);
      await m.flush();
      expect(await m.isOnline(u)).toBe(true);
      expect(await m.getAllOnline()).toContain(u);
      expect(await m.getOnlineCount()).toBeGreaterThanOrEqual(1);
      m.heartbeat(u);
      await m.refreshTtl(u);
      await m.setOnline(u);
      expect(seen.transitions).toEqual([[u, "online", []]]);
      expect(await m.isOnline(uid("never"))).toBe(false);
    });

    test("the online count is the number of online users, an expired one left out without a sweep", async () => {
      const m = await h.instance();
      const a = uid("count");
      const b = uid("count");
      m.heartbeat(a);
      m.heartbeat(b);
      await m.flush();
      const all = await m.getAllOnline();
      expect(all).toEqual(expect.arrayContaining([a, b]));
      expect(await m.getOnlineCount()).toBe(all.length);
      await h.advance(TTL_MS / 2);
      m.heartbeat(a);
      await m.flush();
      await h.advance(TTL_MS / 2 + 100);
      const later = await m.getAllOnline();
      expect(later).toContain(a);
      expect(later).not.toContain(b);
      expect(await m.getOnlineCount()).toBe(later.length);
    });

    test("heartbeats from many users are written in one round trip per flush; every one is counted as received, each user once as written", async () => {
      const m = await h.instance();
      const before = { ...m.stats };
      const users = Array.from({ length: 500 }, () => uid("bulk"));
      for (const u of users) for (let i = 0; i < 3; i++) m.heartbeat(u);
      expect(m.pendingCount()).toBe(500);
      await m.flush();
      expect(m.stats.flushes - before.flushes).toBe(1);
      expect(m.stats.received - before.received).toBe(1500);
      expect(m.stats.heartbeats - before.heartbeats).toBe(500);
      for (const u of users.slice(0, 5)) expect(await m.isOnline(u)).toBe(true);
    });

    test("without heartbeats the user goes offline once, after the TTL; a new heartbeat is a new online", async () => {
      const m = await h.instance();
      const u = uid("off");
      const seen = record(m, [u]);
      m.heartbeat(u);
      await m.flush();
      await h.advance(TTL_MS / 2);
      await m.sweep();
      expect(seen.transitions.map((t) => t[1])).toEqual(["online"]);
      await h.advance(TTL_MS / 2 + 1);
      await m.sweep();
      await m.sweep();
      expect(seen.transitions.map((t) => t[1])).toEqual(["online", "offline"]);
      expect(await m.isOnline(u)).toBe(false);
      m.heartbeat(u);
      await m.flush();
      expect(seen.transitions.map((t) => t[1])).toEqual(["online", "offline", "online"]);
    });

    test("two instances report each transition exactly once between them", async () => {
      const [a, b] = [await h.instance(), await h.instance()];
      const u = uid("twice");
      const [sa, sb] = [record(a, [u]), record(b, [u])];
      a.heartbeat(u);
      b.heartbeat(u);
      await Promise.all([a.flush(), b.flush()]);
      await h.advance(TTL_MS + 1);
      await Promise.all([a.sweep(), b.sweep()]);
      await Promise.all([a.sweep(), b.sweep()]);
      const all = [...sa.transitions, ...sb.transitions].map((t) => t[1]);
      expect(all.sort()).toEqual(["offline", "online"]);
    });

    test("a user counts in a room while held and online; exact across instances; counts change at the flush", async () => {
      const [a, b] = [await h.instance(), await h.instance()];
      const r = room("count");
      const [u1, u2, u3] = [uid("r1"), uid("r2"), uid("r3")];
      const seen = record(a, [], [r]);
      expect(a.hold(r, u1)).toBe(true);
      expect(a.hold(r, u1)).toBe(false); // second local socket
      expect(b.hold(r, u1)).toBe(true); // same user on another instance
      b.hold(r, u2);
      a.hold(r, u3); // held but never heartbeats: not counted online
      a.heartbeat(u1);
      b.heartbeat(u2);
      await a.flush();
      // a's own write changed the room: its view has the new numbers without any sweep
      expect(numbers(a, r)).toEqual({ online: 1, typing: 0, typingUsers: [], holders: 2 });
      await b.flush();
      // b's write is b's to report; a learns it from b (here: a resync)
      await a.resync();
      expect(numbers(a, r)).toEqual({ online: 2, typing: 0, typingUsers: [], holders: 3 });
      expect(await a.roomMembers(r)).toEqual([u1, u2].sort());
      expect(seen.counts.at(-1)).toEqual([r, { online: 2, typing: 0, typingUsers: [], holders: 3 }, "remote"]);

      expect(a.release(r, u1)).toBe(false); // one local socket left
      expect(a.release(r, u1)).toBe(true);
      await a.flush();
      expect(a.roomCount(r)).toBe(2); // b still holds u1
      b.release(r, u1);
      await b.flush();
      await a.resync();
      expect(a.roomCount(r)).toBe(1);
      b.release(r, u2);
      a.release(r, u3);
      await Promise.all([a.flush(), b.flush()]);
      await a.resync();
      expect(numbers(a, r)).toEqual({ online: 0, typing: 0, typingUsers: [], holders: 0 });
      expect(a.release(r, u1)).toBe(false); // nothing held: no-op
    });

    test("joins and leaves are reported once across instances: a user's first hold anywhere, their last release anywhere", async () => {
      const [a, b] = [await h.instance(), await h.instance()];
      const r = room("members");
      const [u1, u2] = [uid("m1"), uid("m2")];
      const [sa, sb] = [record(a, [], [r]), record(b, [], [r])];
      const all = () => [...sa.memberships, ...sb.memberships];
      a.hold(r, u1);
      b.hold(r, u1);
      await Promise.all([a.flush(), b.flush()]);
      expect(all()).toEqual([[r, u1, "join", 1]]);
      b.hold(r, u2);
      await b.flush();
      expect(sb.memberships.at(-1)).toEqual([r, u2, "join", 2]);
      a.release(r, u1);
      await a.flush();
      expect(all().length).toBe(2); // b still holds u1
      b.release(r, u1);
      await b.flush();
      expect(all().at(-1)).toEqual([r, u1, "leave", 1]);
      expect(all().length).toBe(3);
    });

    test("an online or offline transition names the user's rooms on every instance and changes their counts at once", async () => {
      const [a, b] = [await h.instance(), await h.instance()];
      const [r1, r2] = [room("t1"), room("t2")];
      const u = uid("tr");
      const seen = record(b, [u], [r1, r2]);
      a.hold(r1, u);
      b.hold(r2, u);
      await Promise.all([a.flush(), b.flush()]);
      b.heartbeat(u);
      await b.flush();
      expect(seen.transitions).toEqual([[u, "online", [r1, r2].sort()]]);
      expect([b.roomCount(r1), b.roomCount(r2)]).toEqual([1, 1]);
      expect(seen.counts.filter((c) => c[2] === "local").map((c) => [c[0], c[1].online]).sort()).toEqual(
        [[r1, 1], [r2, 1], [r2, 0]].sort(),
      );
      await h.advance(TTL_MS + 1);
      a.heartbeat(uid("other")); // a's sweep refreshes holds first; the user's own presence lapses
      await b.sweep();
      expect(seen.transitions.at(-1)).toEqual([u, "offline", [r1, r2].sort()]);
      expect([b.roomCount(r1), b.roomCount(r2)]).toEqual([0, 0]);
    });

    test("holds are refreshed before they lapse; a dead instance's holds lapse by themselves, reported once", async () => {
      const [alive, dead] = [await h.instance(), await h.instance()];
      const r = room("long");
      const [u, v] = [uid("long"), uid("gone")];
      const seen = record(alive, [], [r]);
      alive.hold(r, u);
      dead.hold(r, v);
      await Promise.all([alive.flush(), dead.flush()]);
      for (let i = 0; i < 4; i++) {
        alive.heartbeat(u);
        await alive.sweep();
        expect({ i, members: await alive.roomMembers(r) }).toEqual({ i, members: [u] });
        await h.advance(TTL_MS / 2);
      }
      // `dead` never refreshed its hold of v: alive's sweep removed it and reported the leave
      expect(seen.memberships.filter((m) => m[2] === "leave")).toEqual([[r, v, "leave", 1]]);
      expect(alive.roomHolders(r)).toBe(1);
    });

    test("typing counts for the typing lifetime, with who is typing", async () => {
      const m = await h.instance();
      const r = room("typing");
      const [u1, u2] = [uid("t1"), uid("t2")];
      m.typing(r, u1);
      m.typing(r, u2);
      m.typing(r, u2);
      await m.flush();
      expect(numbers(m, r)).toEqual({ online: 0, typing: 2, typingUsers: [u1, u2].sort(), holders: 0 });
      await h.advance(TYPING_TTL_MS / 2);
      m.typing(r, u1);
      await m.flush();
      await h.advance(TYPING_TTL_MS / 2 + 1);
      await m.sweep();
      expect(numbers(m, r)).toEqual({ online: 0, typing: 1, typingUsers: [u1], holders: 0 });
      await h.advance(TYPING_TTL_MS);
      await m.sweep();
      expect(numbers(m, r)).toEqual({ online: 0, typing: 0, typingUsers: [], holders: 0 });
    });

    test("a typing stop ends typing at the flush, before the lifetime; a stop for someone not typing changes nothing", async () => {
      const m = await h.instance();
      const other = await h.instance();
      const r = room("typing-stop");
      const [u1, u2] = [uid("s1"), uid("s2")];
      m.typing(r, u1);
      m.typing(r, u2);
      await m.flush();
      const before = m.snapshot().get(r)!.version;
      m.stopTyping(r, u1);
      await m.flush();
      expect(numbers(m, r)).toEqual({ online: 0, typing: 1, typingUsers: [u2], holders: 0 });
      // The last of start/stop queued before a flush wins.
      m.typing(r, u1);
      m.stopTyping(r, u1);
      other.stopTyping(r, uid("never"));
      await Promise.all([m.flush(), other.flush()]);
      expect(numbers(m, r)).toEqual({ online: 0, typing: 1, typingUsers: [u2], holders: 0 });
      expect(m.snapshot().get(r)!.version).toBe(before + 1);
    });

    test("versions order the numbers: an older publication never overwrites a newer one", async () => {
      const [a, b] = [await h.instance(), await h.instance()];
      const r = room("ver");
      const versions: number[] = [];
      a.onRoomCounts((c) => c.has(r) && versions.push(c.get(r)!.version));
      a.hold(r, uid("v1"));
      await a.flush();
      a.hold(r, uid("v2"));
      await a.flush();
      expect(versions.length).toBe(2);
      expect(versions[1]!).toBeGreaterThan(versions[0]!);
      const latest = a.snapshot().get(r)!;
      expect(b.merge(r, latest)).toBe(true);
      expect(b.merge(r, { ...latest, version: latest.version - 1, holders: 99 })).toBe(false);
      expect(b.merge(r, latest)).toBe(false);
      expect(b.roomHolders(r)).toBe(2);
    });

    test("a sweep with nothing expired changes nothing and reports nothing", async () => {
      const m = await h.instance();
      const r = room("quiet");
      const u = uid("quiet");
      m.hold(r, u);
      m.heartbeat(u);
      await m.flush();
      const seen = record(m, [u], [r]);
      await m.sweep();
      await m.sweep();
      expect(seen).toEqual({ transitions: [], memberships: [], counts: [] });
    });
  });
}
