/**
 * MemoryPresenceManager: presence in this process, for the embedded default. Single instance only:
 * another process cannot see it (several trackers in one process may share one, as tests do).
 * The same data and the same incremental counts as the Redis manager, on the tracker's clock.
 */
import type { Membership, PresenceBatch, PresenceChanges, PresenceManager, RoomCounts, Transition } from "./presence.ts";

export interface MemoryPresenceOptions {
  /** Presence and hold lifetime after a write, ms. */
  ttlMs: number;
  typingTtlMs: number;
}

/**
 * key → expiry (ms), kept in expiry order so that a sweep finds what is due in O(due), not by
 * walking every entry (at 10,000 users that walk held the event loop 1.4–3.8 ms each second).
 * A write moves its key to the end; with one lifetime per map and a clock that does not go back,
 * the insertion order is the expiry order. An expiry earlier than the last one written (another
 * tracker's clock sharing this manager, a clock set back) marks the map unordered, and its sweeps
 * walk it all from then on, as they always did.
 */
class ExpiryMap<K> {
  private readonly m = new Map<K, number>();
  private last = -Infinity;
  private ordered = true;

  get size(): number {
    return this.m.size;
  }
  get(k: K): number | undefined {
    return this.m.get(k);
  }
  has(k: K): boolean {
    return this.m.has(k);
  }
  delete(k: K): boolean {
    return this.m.delete(k);
  }
  keys(): IterableIterator<K> {
    return this.m.keys();
  }
  [Symbol.iterator](): IterableIterator<[K, number]> {
    return this.m[Symbol.iterator]();
  }
  /** Sets `k` to expire at `until` (ms). */
  set(k: K, until: number): void {
    this.m.delete(k);
    this.m.set(k, until);
    if (until < this.last) this.ordered = false;
    else this.last = until;
  }
  /**
   * Removes and returns up to `limit` keys due at `now` (expiry ≤ now).
   * @returns the keys, and `more` when the limit left some due
   */
  takeDue(now: number, limit: number): { keys: K[]; more: boolean } {
    const keys: K[] = [];
    for (const [k, until] of this.m) {
      if (until > now) {
        if (this.ordered) break;
        continue;
      }
      if (keys.length >= limit) return { keys: this.removed(keys), more: true };
      keys.push(k);
    }
    return { keys: this.removed(keys), more: false };
  }
  private removed(keys: K[]): K[] {
    for (const k of keys) this.m.delete(k);
    return keys;
  }
}

interface RoomState {
  /** user → instances holding (count). */
  holders: Map<string, number>;
  online: number;
  /** user → typing expiry (ms). */
  typers: ExpiryMap<string>;
  version: number;
}

export class MemoryPresenceManager implements PresenceManager {
  readonly engine = "memory" as const;
  /** user → presence expiry (ms) */
  private readonly online = new ExpiryMap<string>();
  /** "room\nuser\ninstance" → hold expiry (ms) */
  private readonly holds = new ExpiryMap<string>();
  /** user → rooms they hold (on any instance) */
  private readonly userRooms = new Map<string, Set<string>>();
  private readonly rooms = new Map<string, RoomState>();

  constructor(private readonly o: MemoryPresenceOptions) {}

  async start(): Promise<void> {}
  async close(): Promise<void> {}
  state(): "up" {
    return "up";
  }

  async apply(batch: PresenceBatch, now: number): Promise<PresenceChanges> {
    const w = new Write(this);
    const until = now + this.o.ttlMs;
    for (const u of batch.heartbeats) {
      const isNew = !this.online.has(u);
      this.online.set(u, until);
      if (isNew) w.cameOnline(u);
    }
    for (const { roomId, userId } of batch.holds) {
      const k = `${roomId}\n${userId}\n${batch.instance}`;
      const isNew = !this.holds.has(k);
      this.holds.set(k, until);
      if (isNew) w.addHold(roomId, userId);
    }
    for (const { roomId, userId } of batch.releases) {
      if (this.holds.delete(`${roomId}\n${userId}\n${batch.instance}`)) w.dropHold(roomId, userId);
    }
    for (const { roomId, userId } of batch.typing) {
      const r = this.room(roomId);
      const isNew = !r.typers.has(userId);
      r.typers.set(userId, now + this.o.typingTtlMs);
      if (isNew) w.touch(roomId);
    }
    for (const { roomId, userId } of batch.typingStops ?? []) {
      if (this.rooms.get(roomId)?.typers.delete(userId)) w.touch(roomId);
    }
    return w.result();
  }

  async expire(now: number, limit: number): Promise<PresenceChanges & { more: boolean }> {
    const w = new Write(this);
    const users = this.online.takeDue(now, limit);
    for (const u of users.keys) w.wentOffline(u);
    const holds = this.holds.takeDue(now, limit);
    for (const k of holds.keys) {
      const [roomId, userId] = k.split("\n") as [string, string];
      w.dropHold(roomId, userId);
    }
    let more = users.more || holds.more;
    let budget = limit;
    // O(rooms) to look, O(due) to take: rooms are few next to users.
    for (const [roomId, r] of this.rooms) {
      if (budget <= 0) {
        more ||= r.typers.size > 0 && (r.typers.takeDue(now, 0).more);
        continue;
      }
      const typers = r.typers.takeDue(now, budget);
      budget -= typers.keys.length;
      if (typers.keys.length) w.touch(roomId);
      more ||= typers.more;
    }
    return { ...w.result(), more };
  }

  async counts(): Promise<Map<string, RoomCounts>> {
    const out = new Map<string, RoomCounts>();
    for (const [id, r] of this.rooms) if (r.holders.size > 0 || r.typers.size > 0) out.set(id, this.numbers(r));
    return out;
  }

  async isOnline(userId: string, now: number): Promise<boolean> {
    return (this.online.get(userId) ?? 0) > now;
  }

  async onlineUsers(now: number): Promise<string[]> {
    return [...this.online].filter(([, until]) => until > now).map(([u]) => u).sort();
  }

  async onlineCount(now: number): Promise<number> {
    // Counted in place: no array of every online user, and no sort, for one number.
    let n = 0;
    for (const [, until] of this.online) if (until > now) n++;
    return n;
  }

  async roomMembers(roomId: string, now: number): Promise<string[]> {
    const r = this.rooms.get(roomId);
    if (!r) return [];
    return [...r.holders.keys()].filter((u) => (this.online.get(u) ?? 0) > now).sort();
  }

  // ---- used by Write ----

  /** @internal */
  room(roomId: string): RoomState {
    let r = this.rooms.get(roomId);
    if (!r) this.rooms.set(roomId, (r = { holders: new Map(), online: 0, typers: new ExpiryMap(), version: 0 }));
    return r;
  }

  /** @internal */
  roomsOf(userId: string): Set<string> {
    let s = this.userRooms.get(userId);
    if (!s) this.userRooms.set(userId, (s = new Set()));
    return s;
  }

  /** @internal */
  isMember(userId: string): boolean {
    return this.online.has(userId);
  }

  /** @internal */
  numbers(r: RoomState): RoomCounts {
    return { online: r.online, typing: r.typers.size, typingUsers: [...r.typers.keys()].sort(), holders: r.holders.size, version: r.version };
  }
}

/** One write's bookkeeping: the same steps as the Redis scripts. */
class Write {
  private readonly changed = new Set<string>();
  private readonly transitions: Transition[] = [];
  private readonly joins: Membership[] = [];
  private readonly leaves: Membership[] = [];

  constructor(private readonly m: MemoryPresenceManager) {}

  touch(roomId: string): void {
    this.changed.add(roomId);
  }

  cameOnline(userId: string): void {
    const rooms = [...(this.m.roomsOf(userId))].sort();
    for (const r of rooms) {
      this.m.room(r).online++;
      this.touch(r);
    }
    this.transitions.push({ userId, rooms });
  }

  wentOffline(userId: string): void {
    const rooms = [...this.m.roomsOf(userId)].sort();
    for (const r of rooms) {
      this.m.room(r).online--;
      this.touch(r);
    }
    this.transitions.push({ userId, rooms });
  }

  addHold(roomId: string, userId: string): void {
    const r = this.m.room(roomId);
    const n = (r.holders.get(userId) ?? 0) + 1;
    r.holders.set(userId, n);
    if (n > 1) return;
    this.m.roomsOf(userId).add(roomId);
    if (this.m.isMember(userId)) r.online++;
    this.touch(roomId);
    this.joins.push({ roomId, userId, holders: r.holders.size });
  }

  dropHold(roomId: string, userId: string): void {
    const r = this.m.room(roomId);
    const n = (r.holders.get(userId) ?? 0) - 1;
    if (n > 0) {
      r.holders.set(userId, n);
      return;
    }
    r.holders.delete(userId);
    this.m.roomsOf(userId).delete(roomId);
    if (this.m.isMember(userId)) r.online--;
    this.touch(roomId);
    this.leaves.push({ roomId, userId, holders: r.holders.size });
  }

  result(): PresenceChanges {
    const counts = new Map<string, RoomCounts>();
    for (const id of this.changed) {
      const r = this.m.room(id);
      r.version++;
      counts.set(id, this.m.numbers(r));
    }
    return { transitions: this.transitions, joins: this.joins, leaves: this.leaves, counts };
  }
}
