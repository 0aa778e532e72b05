/**
 * Presence (seed 000 §3 and §5.2, seed 001 PresenceRedis, seed 003 §6; SPEC "Presence").
 *
 * A user is online while they heartbeat: each heartbeat sets `presence:user:{user_id}` = "online"
 * for PRESENCE_TTL_SECONDS. A user counts in a room while an instance holds a room socket of theirs
 * there *and* they are online. Heartbeats, holds and typing from every socket of an instance are
 * collected and written in one round trip per flush tick, never one per heartbeat.
 *
 * Transitions: `online` is reported by the instance whose write created the user's entry,
 * `offline` by the instance whose sweep removed the expired entry; the backend makes both atomic,
 * so each transition is reported exactly once however many instances share it. No keyspace
 * notifications are needed.
 *
 * {@link PresenceManager} holds the logic; a {@link PresenceBackend} holds the state:
 * `memory.ts` (in-process, one instance) and `redis.ts` (several instances). One contract suite
 * (`test/contract/presence.contract.ts`) runs on both.
 */
import type { Clock } from "../../clock.ts";
import type { Logger } from "../../log.ts";

export type PresenceStatus = "online" | "offline";

/** Users online in a room and users typing in it. */
export interface RoomCounts {
  online: number;
  typing: number;
}

/** (room, user) pair. */
export interface RoomUser {
  roomId: string;
  userId: string;
}

/** What one flush writes. */
export interface PresenceBatch {
  /** The instance writing: holds are per (room, user, instance). */
  instance: string;
  heartbeats: string[];
  /** This instance holds these (new, or a refresh before the entry expires). */
  holds: RoomUser[];
  /** This instance no longer holds these. */
  releases: RoomUser[];
  typing: RoomUser[];
}

/** Where presence state lives. All times are epoch ms from the manager's clock. */
export interface PresenceBackend {
  readonly engine: "memory" | "redis";
  /** Begins connecting; never throws for an unreachable engine (state() says `down`). */
  start(): Promise<void>;
  close(): Promise<void>;
  state(): "up" | "down";
  /**
   * Writes a batch in one round trip.
   * @returns the users whose presence began with this batch (online transitions)
   * @throws when the engine cannot be reached
   */
  apply(batch: PresenceBatch, now: number): Promise<string[]>;
  /** Removes users whose presence expired; across instances, each is returned to exactly one caller. */
  expire(now: number): Promise<string[]>;
  /** Counts of every room that has a holder or a typer; drops expired holds and typing. */
  counts(now: number): Promise<Map<string, RoomCounts>>;
  isOnline(userId: string, now: number): Promise<boolean>;
  onlineUsers(now: number): Promise<string[]>;
  onlineCount(now: number): Promise<number>;
  /** Online users holding a socket in the room, sorted. */
  roomMembers(roomId: string, now: number): Promise<string[]>;
}

export interface PresenceOptions {
  backend: PresenceBackend;
  clock: Clock;
  log: Logger;
  /** Presence lifetime after a heartbeat (seed: 40 s), ms. */
  ttlMs: number;
  /** Typing lifetime after a `room.typing` (6 s), ms. */
  typingTtlMs: number;
  /** Flush tick for batched writes, ms (0: no timer; call flush()). */
  flushMs: number;
  /** Expiry and counts cycle, ms (0: no timer; call sweep()). */
  sweepMs: number;
  /** This instance's name in shared state (default: random). */
  instanceId?: string;
  /**
   * `false` writes each heartbeat in a round trip of its own, the naive way seed 001 did it. Only
   * for measuring what batching buys (bench/heartbeat.ts); never faster.
   */
  batching?: boolean;
}

type Listener<T extends unknown[]> = (...args: T) => void;

const key = (roomId: string, userId: string) => `${roomId}\n${userId}`;
const unkey = (k: string): RoomUser => {
  const i = k.indexOf("\n");
  return { roomId: k.slice(0, i), userId: k.slice(i + 1) };
};

export class PresenceManager {
  /** Local sockets per (room, user) on this instance. */
  private readonly local = new Map<string, number>();
  /** user → rooms this instance holds for them. */
  private readonly localRooms = new Map<string, Set<string>>();
  /** room → distinct users this instance holds in it. */
  private readonly localUsers = new Map<string, number>();
  private heartbeats = new Set<string>();
  /** (room, user) → what to write next: the last of hold/release wins. */
  private holdOps = new Map<string, "hold" | "release">();
  private typingOps = new Set<string>();
  private counts = new Map<string, RoomCounts>();
  private lastHoldRefresh: number;
  private flushing: Promise<void> | null = null;
  private sweeping: Promise<void> | null = null;
  private timers: ReturnType<typeof setInterval>[] = [];
  private failing = false;
  private readonly transitionListeners: Listener<[string, PresenceStatus]>[] = [];
  private readonly countListeners: Listener<[Map<string, RoomCounts>]>[] = [];
  /** Round trips made by flushes, heartbeats written; for /metrics and the bench. */
  readonly stats = { flushes: 0, heartbeats: 0, flushFailures: 0 };
  readonly instanceId: string;

  constructor(private readonly o: PresenceOptions) {
    this.lastHoldRefresh = o.clock.now();
    this.instanceId = o.instanceId ?? crypto.randomUUID().slice(0, 8);
  }

  get engine(): "memory" | "redis" {
    return this.o.backend.engine;
  }

  async start(): Promise<void> {
    await this.o.backend.start();
    if (this.o.flushMs > 0) this.timers.push(setInterval(() => void this.flush().catch(() => {}), this.o.flushMs));
    if (this.o.sweepMs > 0) this.timers.push(setInterval(() => void this.sweep().catch(() => {}), this.o.sweepMs));
    for (const t of this.timers) t.unref?.();
  }

  /** Stops the timers, writes what is queued (releases of closed sockets, so counts drop now rather than at expiry), disconnects. */
  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await this.sweeping?.catch(() => {});
    await this.flush().catch(() => {});
    await this.o.backend.close();
  }

  /** `up` when the backend answers; `down` while it does not (heartbeats wait in memory, deduplicated). */
  state(): "up" | "down" {
    return this.failing ? "down" : this.o.backend.state();
  }

  /** Called with each transition this instance detects (exactly once across instances). */
  onTransition(fn: (userId: string, status: PresenceStatus) => void): void {
    this.transitionListeners.push(fn);
  }

  /** Called after each sweep with the rooms whose counts changed (a room that emptied has zeros). */
  onRoomCounts(fn: (changed: Map<string, RoomCounts>) => void): void {
    this.countListeners.push(fn);
  }

  /** Queues a heartbeat for the next flush (seed 000 §5.2 `presence.heartbeat`). */
  heartbeat(userId: string): void {
    if (this.o.batching === false) return this.writeAlone(userId);
    this.heartbeats.add(userId);
  }

  /** The naive path: one round trip for this heartbeat alone. */
  private writeAlone(userId: string): void {
    const batch: PresenceBatch = { instance: this.instanceId, heartbeats: [userId], holds: [], releases: [], typing: [] };
    this.o.backend.apply(batch, this.o.clock.now()).then(
      (online) => {
        this.stats.flushes++;
        this.stats.heartbeats++;
        this.setFailing(false);
        for (const u of online) this.emitTransition(u, "online");
      },
      (err) => {
        this.stats.flushFailures++;
        this.setFailing(true, err);
      },
    );
  }

  /**
   * Counts one more local socket of `userId` in `roomId`.
   * @returns true when it is the user's first socket in the room on this instance
   */
  hold(roomId: string, userId: string): boolean {
    const k = key(roomId, userId);
    const n = this.local.get(k) ?? 0;
    this.local.set(k, n + 1);
    if (n === 0) {
      this.holdOps.set(k, "hold");
      let rooms = this.localRooms.get(userId);
      if (!rooms) this.localRooms.set(userId, (rooms = new Set()));
      rooms.add(roomId);
      this.localUsers.set(roomId, (this.localUsers.get(roomId) ?? 0) + 1);
    }
    return n === 0;
  }

  /**
   * Counts one local socket fewer.
   * @returns true when it was the user's last socket in the room on this instance
   */
  release(roomId: string, userId: string): boolean {
    const k = key(roomId, userId);
    const n = this.local.get(k);
    if (n === undefined) return false;
    if (n > 1) {
      this.local.set(k, n - 1);
      return false;
    }
    this.local.delete(k);
    this.holdOps.set(k, "release");
    const rooms = this.localRooms.get(userId);
    rooms?.delete(roomId);
    if (rooms?.size === 0) this.localRooms.delete(userId);
    const users = (this.localUsers.get(roomId) ?? 1) - 1;
    if (users > 0) this.localUsers.set(roomId, users);
    else this.localUsers.delete(roomId);
    return true;
  }

  /** Distinct users with a socket in `roomId` on this instance (immediate; no heartbeat needed). */
  localUserCount(roomId: string): number {
    return this.localUsers.get(roomId) ?? 0;
  }

  /** Rooms where this instance holds a socket of `userId`. */
  roomsHeldLocally(userId: string): string[] {
    return [...(this.localRooms.get(userId) ?? [])];
  }

  /** Marks `userId` typing in `roomId` for the typing lifetime. */
  typing(roomId: string, userId: string): void {
    this.typingOps.add(key(roomId, userId));
  }

  /** Users online in a room, as of the last sweep (0 for an unknown room). */
  roomCount(roomId: string): number {
    return this.counts.get(roomId)?.online ?? 0;
  }

  /** Counts of every room as of the last sweep. */
  snapshot(): ReadonlyMap<string, RoomCounts> {
    return this.counts;
  }

  // ---- the seed-001 PresenceRedis helpers -------------------------------------------------

  /** `set_online`: heartbeat written now (not on the next tick). */
  async setOnline(userId: string): Promise<void> {
    this.heartbeat(userId);
    await this.flush();
  }

  /** `refresh_ttl`: same as a heartbeat written now. */
  refreshTtl(userId: string): Promise<void> {
    return this.setOnline(userId);
  }

  /** `is_online` */
  isOnline(userId: string): Promise<boolean> {
    return this.o.backend.isOnline(userId, this.o.clock.now());
  }

  /** `get_all_online` */
  getAllOnline(): Promise<string[]> {
    return this.o.backend.onlineUsers(this.o.clock.now());
  }

  /** `get_online_count` */
  getOnlineCount(): Promise<number> {
    return this.o.backend.onlineCount(this.o.clock.now());
  }

  /** Online users holding a socket in `roomId`, from the backend (not the snapshot). */
  roomMembers(roomId: string): Promise<string[]> {
    return this.o.backend.roomMembers(roomId, this.o.clock.now());
  }

  /**
   * Writes everything queued in one round trip and reports online transitions. Concurrent calls
   * share one flush. On failure the queue is kept (deduplicated, so its size is bounded by
   * distinct users and rooms) for the next tick.
   */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing.then(() => (this.pendingCount() ? this.flush() : undefined));
    if (this.pendingCount() === 0) return Promise.resolve();
    const heartbeats = this.heartbeats;
    const holdOps = this.holdOps;
    const typingOps = this.typingOps;
    this.heartbeats = new Set();
    this.holdOps = new Map();
    this.typingOps = new Set();
    const batch: PresenceBatch = { instance: this.instanceId, heartbeats: [...heartbeats], holds: [], releases: [], typing: [...typingOps].map(unkey) };
    for (const [k, op] of holdOps) (op === "hold" ? batch.holds : batch.releases).push(unkey(k));
    this.flushing = (async () => {
      try {
        const online = await this.o.backend.apply(batch, this.o.clock.now());
        this.stats.flushes++;
        this.stats.heartbeats += batch.heartbeats.length;
        this.setFailing(false);
        for (const u of online) this.emitTransition(u, "online");
      } catch (err) {
        this.stats.flushFailures++;
        this.setFailing(true, err);
        // Keep what was not written; newer operations queued meanwhile take precedence.
        for (const u of heartbeats) this.heartbeats.add(u);
        for (const [k, op] of holdOps) if (!this.holdOps.has(k)) this.holdOps.set(k, op);
        for (const k of typingOps) this.typingOps.add(k);
        throw err;
      } finally {
        this.flushing = null;
      }
    })();
    return this.flushing;
  }

  /**
   * One expiry-and-counts cycle: reports offline transitions, refreshes this instance's holds
   * before they expire, and recomputes room counts.
   */
  sweep(): Promise<void> {
    if (this.sweeping) return this.sweeping;
    this.sweeping = (async () => {
      try {
        const now = this.o.clock.now();
        if (now - this.lastHoldRefresh >= this.o.ttlMs / 3) {
          this.lastHoldRefresh = now;
          for (const k of this.local.keys()) if (!this.holdOps.has(k)) this.holdOps.set(k, "hold");
        }
        await this.flush().catch(() => {});
        const offline = await this.o.backend.expire(now);
        for (const u of offline) this.emitTransition(u, "offline");
        const next = await this.o.backend.counts(now);
        this.setFailing(false);
        const changed = new Map<string, RoomCounts>();
        for (const [room, c] of next) {
          const prev = this.counts.get(room);
          if (!prev || prev.online !== c.online || prev.typing !== c.typing) changed.set(room, c);
        }
        for (const room of this.counts.keys()) if (!next.has(room)) changed.set(room, { online: 0, typing: 0 });
        this.counts = next;
        if (changed.size) for (const fn of this.countListeners) fn(changed);
      } catch (err) {
        this.setFailing(true, err);
        throw err;
      } finally {
        this.sweeping = null;
      }
    })();
    return this.sweeping;
  }

  /** Distinct operations waiting for the next flush (bounded by users and rooms, not by heartbeats). */
  pendingCount(): number {
    return this.heartbeats.size + this.holdOps.size + this.typingOps.size;
  }

  private emitTransition(userId: string, status: PresenceStatus): void {
    for (const fn of this.transitionListeners) {
      try {
        fn(userId, status);
      } catch (err) {
        this.o.log.error("presence: transition listener failed", { err });
      }
    }
  }

  private setFailing(failing: boolean, err?: unknown): void {
    if (failing && !this.failing) this.o.log.warn("presence: backend unreachable; heartbeats are kept and retried", { engine: this.engine, err });
    if (!failing && this.failing) {
      this.o.log.info("presence: backend reachable again", { engine: this.engine });
      // It may have restarted empty: write every local hold again at the next sweep.
      this.lastHoldRefresh = -Infinity;
    }
    this.failing = failing;
  }
}
