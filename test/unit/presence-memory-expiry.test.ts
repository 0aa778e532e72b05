import { describe, expect, test } from "bun:test";
import { MemoryPresenceManager } from "../../src/engine/presence/memory.ts";
import type { PresenceBatch } from "../../src/engine/presence/presence.ts";

// The in-process manager keeps expiries in order, so a sweep takes what is due without walking
// everyone: these check that it still takes exactly what is due, within the limit, whatever the
// order the writes came in.
const TTL = 40_000;
const TYPING = 5_000;
const ROOM = "room_city_general";

const batch = (b: Partial<PresenceBatch>): PresenceBatch => ({ instance: "i0", heartbeats: [], holds: [], releases: [], typing: [], ...b });
const offline = (changes: { transitions: { userId: string }[] }) => changes.transitions.map((t) => t.userId).sort();

describe("memory presence: expiry", () => {
  test("a sweep takes the users due and no others; a refresh moves a user's expiry later", async () => {
    const m = new MemoryPresenceManager({ ttlMs: TTL, typingTtlMs: TYPING });
    await m.apply(batch({ heartbeats: ["u_a", "u_b"] }), 0);
    await m.apply(batch({ heartbeats: ["u_c"] }), 10);
    await m.apply(batch({ heartbeats: ["u_a"] }), 20); // u_a refreshed: now due last
    expect(offline(await m.expire(TTL + 10, 100))).toEqual(["u_b", "u_c"]);
    expect(await m.isOnline("u_a", TTL + 10)).toBe(true);
    expect(offline(await m.expire(TTL + 10, 100))).toEqual([]);
    expect(offline(await m.expire(TTL + 20, 100))).toEqual(["u_a"]);
  });

  test("past the limit a sweep says there is more, and the next takes the rest, each user once", async () => {
    const m = new MemoryPresenceManager({ ttlMs: TTL, typingTtlMs: TYPING });
    const users = ["u_1", "u_2", "u_3", "u_4", "u_5"];
    await m.apply(batch({ heartbeats: users }), 0);
    const seen: string[] = [];
    const mores: boolean[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await m.expire(TTL, 2);
      seen.push(...offline(c));
      mores.push(c.more);
    }
    expect(seen.sort()).toEqual(users);
    expect(mores).toEqual([true, true, false]);
  });

  test("writes whose expiries come out of order (a clock behind another's) are still all found", async () => {
    const m = new MemoryPresenceManager({ ttlMs: TTL, typingTtlMs: TYPING });
    await m.apply(batch({ heartbeats: ["u_late"], holds: [{ roomId: ROOM, userId: "u_late" }] }), 1_000);
    await m.apply(batch({ instance: "i1", heartbeats: ["u_early"], holds: [{ roomId: ROOM, userId: "u_early" }] }), 500);
    const first = await m.expire(500 + TTL, 100);
    expect(offline(first)).toEqual(["u_early"]);
    expect(first.leaves.map((l) => l.userId)).toEqual(["u_early"]);
    expect(await m.roomMembers(ROOM, 500 + TTL)).toEqual(["u_late"]);
    expect(offline(await m.expire(1_000 + TTL, 100))).toEqual(["u_late"]);
    expect(await m.roomMembers(ROOM, 1_000 + TTL)).toEqual([]);
  });

  test("typing ends at its lifetime in every room, within one limit shared by the rooms", async () => {
    const m = new MemoryPresenceManager({ ttlMs: TTL, typingTtlMs: TYPING });
    await m.apply(batch({ typing: [{ roomId: ROOM, userId: "u_a" }, { roomId: "room_city_science", userId: "u_b" }, { roomId: "room_city_science", userId: "u_c" }] }), 0);
    await m.apply(batch({ typing: [{ roomId: ROOM, userId: "u_d" }] }), 1_000);
    const first = await m.expire(TYPING, 2);
    expect(first.more).toBe(true);
    const second = await m.expire(TYPING, 2);
    expect(second.more).toBe(false);
    const counts = await m.counts();
    expect(counts.get(ROOM)?.typingUsers).toEqual(["u_d"]);
    expect(counts.get("room_city_science")).toBeUndefined();
    expect((await m.expire(TYPING + 1_000, 10)).counts.get(ROOM)?.typingUsers).toEqual([]);
  });
});
