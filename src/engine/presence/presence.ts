/**
 * Presence (seed 000 §3 and §5.2, seed 001 PresenceRedis, seed 003 §5–§6; SPEC "Presence").
 *
 * A user is online while they heartbeat: each heartbeat sets `presence:user:{user_id}` = "online"
 * for PRESENCE_TTL_SECONDS. A user counts in a room while some instance holds a room socket of
 * theirs there *and* they are online. Heartbeats, holds and typing from every socket of an
 * instance are collected and written in one round trip per flush tick, never one per heartbeat.
 *
 * Everything is reported exactly once across instances, by the instance whose write caused it:
 * - a transition (`online` by the write that made the user's entry, `offline` by the sweep that
 *   removed it), with the rooms the user holds anywhere;
 * - a membership change (a user's first hold of a room on any instance, or their last release);
 * - new room counts, with a version that grows with each change, so every instance applies the
 *   newest whatever order they arrive in.
 * Counts are kept up to date by each write (O(changes)), never recomputed by walking rooms.
 *
 * {@link PresenceManager} is where the shared state lives (centrifuge's name):
 * {@link MemoryPresenceManager} (in-process, one instance) and {@link RedisPresenceManager}
 * (several instances). One contract suite (`test/contract/presence.contract.ts`) runs on both, on
 * fake time. {@link PresenceTracker} is an instance's side: its holds, its queue, its timers.
 */
import { systemScheduler, type Clock, type Scheduler, type Timer } from "../../clock.ts";
import type { Logger } from "../../log.ts";

export type PresenceStatus = "online" | "offline";

/** A room's numbers (seed 003 §4.1), with the version that orders them. */
export interface RoomCounts {
  /** Distinct users holding a socket in the room who are online. */
  online: number;
  /** Distinct users typing within the typing lifetime. */
  typing: number;
  /** Who is typing (seed 003 §4.1 `typing_users`), sorted. */
  typingUsers: string[];
  /** Distinct users holding a socket in the room, online or not (caps per-user events). */
  holders: number;
  /** Grows by one with every change of the room's numbers; the newest wins. */
  version: number;
}

/** (room, user) pair. */
export interface RoomUser {
  roomId: string;
  userId: string;
}

/** A user's transition and the rooms they hold a socket in on any instance. */
export interface Transition {
  userId: string;
  rooms: string[];
}

/** A user's first hold of a room on any instance (join), or their last release (leave). */
export interface Membership {
  roomId: string;
  userId: string;
  /** Users holding the room after the change. */
  holders: number;
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
  /** These stopped typing now (a Matrix typing list that dropped them), before their typing lifetime ends. */
  typingStops?: RoomUser[];
}

/** What a write changed, reported only to its writer. */
export interface PresenceChanges {
  /** Users who became online (apply) or offline (expire). */
  transitions: Transition[];
  joins: Membership[];
  leaves: Membership[];
  /** New numbers of every room the write changed. */
  counts: Map<string, RoomCounts>;
}

/**
 * Where presence state lives. All times are epoch ms from the tracker's clock (so fake time works
 * on every implementation).
 */
export interface PresenceManager {
  readonly engine: "memory" | "redis";
  /** Begins connecting; never throws for an unreachable engine (state() says `down`). */
  start(): Promise<void>;
  close(): Promise<void>;
  state(): "up" | "down";
  /**
   * Writes a batch in one round trip: heartbeats (TTL `ttlMs`), holds, releases, typing.
   * @returns what it changed: online transitions, joins, leaves, counts
   * @throws when the engine cannot be reached (nothing of the batch is applied)
   */
  apply(batch: PresenceBatch, now: number): Promise<PresenceChanges>;
  /**
   * Removes up to `limit` expired users, holds and typers each; across instances every expiry is
   * returned to exactly one caller.
   * @returns offline transitions, leaves, counts, and `more` when a limit was reached
   */
  expire(now: number, limit: number): Promise<PresenceChanges & { more: boolean }>;
  /** Numbers of every room with a holder or a typer: O(rooms), for a resync only. */
  counts(): Promise<Map<string, RoomCounts>>;
  isOnline(userId: string, now: number): Promise<boolean>;
  onlineUsers(now: number): Promise<string[]>;
  onlineCount(now: number): Promise<number>;
  /** Online users holding a socket in the room, sorted. */
  roomMembers(roomId: string, now: number): Promise<string[]>;
}

export interface PresenceTrackerOptions {
  manager: PresenceManager;
  clock: Clock;
  scheduler?: Scheduler;
  log: Logger;
  /** Presence lifetime after a heartbeat (seed: 40 s), ms. Holds live as long, refreshed every third of it. */
  ttlMs: number;
  /** Flush tick for batched writes, ms (0: no timer; call flush()). */
  flushMs: number;
  /** Expiry cycle, ms (0: no timer; call sweep()). */
  sweepMs: number;
  /** This instance's name in shared state (default: random). */
  instanceId?: string;
  /**
   * `false` writes each heartbeat in a round trip of its own, the naive way seed 001 did it. Only
   * for measuring what batching buys (bench/heartbeat.ts); never faster.
   */
  batching?: boolean;
  /** Most expiries handled per script call (a sweep loops while there are more). */
  expireLimit?: number;
}

type Listener<T extends unknown[]> = (...args: T) => void;

/** Where a room's numbers came from: this instance's own write, or another instance's. */
export type CountsOrigin = "local" | "remote";

const key = (roomId: string, userId: string) => `${roomId}\n${userId}`;
const unkey = (k: string): RoomUser => {
  const i = k.indexOf("\n");
  return { roomId: k.slice(0, i), userId: k.slice(i + 1) };
};

/**
 * An instance's presence: counts its local sockets per (room, user), queues heartbeats, holds and
 * typing, writes them once per flush tick, sweeps expiries, and keeps the view of every room's
 * numbers that snapshots and `members_online` read.
 */
export class PresenceTracker {
  /** Local sockets per (room, user) on this instance. */
  private readonly local = new Map<string, number>();
  /** user → rooms this instance holds for them. */
  private readonly localRooms = new Map<string, Set<string>>();
  /** room → distinct users this instance holds in it. */
  private readonly localUsers = new Map<string, number>();
  private heartbeats = new Set<string>();
  /** (room, user) → what to write next: the last of hold/release wins. */
  private holdOps = new Map<string, "hold" | "release">();
  /** (room, user) → typing started (or refreshed) or stopped: the last one wins. */
  private typingOps = new Map<string, "start" | "stop">();
  /** Every room's numbers as this instance knows them. */
  private readonly view = new Map<string, RoomCounts>();
  private lastHoldRefresh: number;
  private flushing: Promise<void> | null = null;
  /** When the last flush started (clock ms), and the early flush a first heartbeat asked for. */
  private lastFlushAt = -Infinity;
  private early: Timer | null = null;
  /**
   * The flush tick, armed only while something is queued: it fires at the instants a
   * `flushMs` interval started with {@link start} would (so batching and round trips are as with
   * one), but an instance with nothing to write does not wake for it (an idle binary woke ~100
   * times a second for an empty tick, most of its idle CPU).
   */
  private tick: Timer | null = null;
  /** Clock ms the tick grid starts from (set by {@link start}); null before start and after close. */
  private tickOrigin: number | null = null;
  private sweeping: Promise<void> | null = null;
  private timers: Timer[] = [];
  private failing = false;
  private readonly scheduler: Scheduler;
  private readonly transitionListeners: Listener<[Transition, PresenceStatus]>[] = [];
  private readonly membershipListeners: Listener<[Membership, "join" | "leave"]>[] = [];
  private readonly countListeners: Listener<[Map<string, RoomCounts>, CountsOrigin]>[] = [];
  /**
   * For /metrics and the bench: `received` heartbeats handed to {@link heartbeat} (sockets and
   * Matrix, before deduplication), `heartbeats` written, `flushes` round trips made by flushes.
   */
  readonly stats = { received: 0, flushes: 0, heartbeats: 0, flushFailures: 0, expirySweeps: 0 };
  readonly instanceId: string;

  constructor(private readonly o: PresenceTrackerOptions) {
    this.lastHoldRefresh = o.clock.now();
    this.instanceId = o.instanceId ?? crypto.randomUUID().slice(0, 8);
    this.scheduler = o.scheduler ?? systemScheduler;
  }

  get engine(): "memory" | "redis" {
    return this.o.manager.engine;
  }

  /** Connects the manager, loads every room's numbers, starts the flush and sweep timers. */
  async start(): Promise<void> {
    await this.o.manager.start();
    await this.resync().catch(() => {});
    this.tickOrigin = this.o.clock.now();
    if (this.pendingCount() > 0) this.wantFlush();
    if (this.o.sweepMs > 0) this.timers.push(this.scheduler.every(this.o.sweepMs, () => void this.sweep().catch(() => {})));
  }

  /** Stops the timers, writes what is queued (releases of closed sockets, so counts drop now rather than at expiry), disconnects. */
  async close(): Promise<void> {
    for (const t of this.timers) t.cancel();
    this.timers = [];
    this.early?.cancel();
    this.early = null;
    this.tick?.cancel();
    this.tick = null;
    this.tickOrigin = null;
    await this.sweeping?.catch(() => {});
    await this.flush().catch(() => {});
    await this.o.manager.close();
  }

  /** `up` when the manager answers; `down` while it does not (heartbeats wait in memory, deduplicated). */
  state(): "up" | "down" {
    return this.failing ? "down" : this.o.manager.state();
  }

  /** Called with each transition this instance detects (exactly once across instances). */
  onTransition(fn: (t: Transition, status: PresenceStatus) => void): void {
    this.transitionListeners.push(fn);
  }

  /** Called with each join or leave this instance's writes caused (exactly once across instances). */
  onMembership(fn: (m: Membership, kind: "join" | "leave") => void): void {
    this.membershipListeners.push(fn);
  }

  /**
   * Called with rooms whose numbers changed in the view: `local` when this instance's write
   * changed them (it should tell the others), `remote` when another instance's did (or a resync
   * found them different).
   */
  onRoomCounts(fn: (changed: Map<string, RoomCounts>, origin: CountsOrigin) => void): void {
    this.countListeners.push(fn);
  }

  /**
   * Queues a heartbeat for the next flush (seed 000 §5.2 `presence.heartbeat`).
   * @param first the first heartbeat of a socket (its user may be coming online): written as soon
   *   as no flush is in flight and half a tick has passed since the last one, rather than at the
   *   tick, so "online" shows sooner while round trips stay at most twice the tick rate
   */
  heartbeat(userId: string, first = false): void {
    this.stats.received++;
    if (this.o.batching === false) return this.writeAlone(userId);
    this.heartbeats.add(userId);
    this.wantFlush();
    if (first && this.o.flushMs > 0 && !this.early) {
      const wait = Math.max(0, this.lastFlushAt + this.o.flushMs / 2 - this.o.clock.now());
      this.early = this.scheduler.after(wait, () => {
        this.early = null;
        if (!this.flushing) void this.flush().catch(() => {});
      });
    }
  }

  /** The naive path: one round trip for this heartbeat alone. */
  private writeAlone(userId: string): void {
    const batch: PresenceBatch = { instance: this.instanceId, heartbeats: [userId], holds: [], releases: [], typing: [] };
    this.o.manager.apply(batch, this.o.clock.now()).then(
      (changes) => {
        this.stats.flushes++;
        this.stats.heartbeats++;
        this.setFailing(false);
        this.report(changes, "online");
      },
      (err) => {
        this.stats.flushFailures++;
        this.setFailing(true, err);
      },
    );
  }

  /**
   * Counts one more local socket of `userId` in `roomId`; the first one is written at the next flush.
   * @returns true when it is the user's first socket in the room on this instance
   */
  hold(roomId: string, userId: string): boolean {
    const k = key(roomId, userId);
    const n = this.local.get(k) ?? 0;
    this.local.set(k, n + 1);
    if (n === 0) {
      this.holdOps.set(k, "hold");
      this.wantFlush();
      let rooms = this.localRooms.get(userId);
      if (!rooms) this.localRooms.set(userId, (rooms = new Set()));
      rooms.add(roomId);
      this.localUsers.set(roomId, (this.localUsers.get(roomId) ?? 0) + 1);
    }
    return n === 0;
  }

  /**
   * Counts one local socket fewer; the last one's release is written at the next flush.
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
    this.wantFlush();
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

  /** Marks `userId` typing in `roomId` for the typing lifetime (written at the next flush). */
  typing(roomId: string, userId: string): void {
    this.typingOps.set(key(roomId, userId), "start");
    this.wantFlush();
  }

  /** Ends `userId`'s typing in `roomId` at the next flush rather than at the end of its lifetime. */
  stopTyping(roomId: string, userId: string): void {
    this.typingOps.set(key(roomId, userId), "stop");
    this.wantFlush();
  }

  /** Users online in a room, as this instance knows it (0 for an unknown room). */
  roomCount(roomId: string): number {
    return this.view.get(roomId)?.online ?? 0;
  }

  /** Users holding a socket in a room on any instance, as this instance knows it. */
  roomHolders(roomId: string): number {
    return this.view.get(roomId)?.holders ?? 0;
  }

  /**
   * Users holding a socket in a room now, as far as this instance can tell: the larger of the
   * view's holders (as of the last write it saw) and the distinct users its own sockets hold there,
   * which the view counts only once their hold is flushed. What caps per-user room events: in a
   * connect storm the sockets opened while a flush is in flight are already in the room when that
   * flush's joins are announced.
   */
  roomUsersAtLeast(roomId: string): number {
    return Math.max(this.view.get(roomId)?.holders ?? 0, this.localUsers.get(roomId) ?? 0);
  }

  /** Every room's numbers as this instance knows them. */
  snapshot(): ReadonlyMap<string, RoomCounts> {
    return this.view;
  }

  /**
   * Applies numbers another instance published (or a resync read): kept only when newer than
   * what the view has, so order of arrival does not matter.
   * @returns true when the view changed
   */
  merge(roomId: string, counts: RoomCounts): boolean {
    const prev = this.view.get(roomId);
    if (prev && prev.version >= counts.version) return false;
    this.setView(roomId, counts);
    return true;
  }

  /**
   * Reloads every room's numbers from the manager (after a broker outage, and periodically: a
   * publication of counts is at most once). Rooms that differ are reported as `remote` changes.
   */
  async resync(): Promise<void> {
    const all = await this.o.manager.counts();
    const changed = new Map<string, RoomCounts>();
    for (const [room, c] of all) {
      const prev = this.view.get(room);
      if (prev && prev.version >= c.version) continue;
      this.setView(room, c);
      if (!prev || !sameNumbers(prev, c)) changed.set(room, c);
    }
    for (const [room, prev] of this.view) {
      if (all.has(room)) continue;
      // Gone from the manager: nobody holds or types there any more. The version stays, so an
      // older publication still in flight cannot bring the numbers back.
      const zero = { online: 0, typing: 0, typingUsers: [], holders: 0, version: prev.version };
      this.view.set(room, zero);
      if (!sameNumbers(prev, zero)) changed.set(room, zero);
    }
    if (changed.size) this.emitCounts(changed, "remote");
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
    return this.o.manager.isOnline(userId, this.o.clock.now());
  }

  /** `get_all_online` */
  getAllOnline(): Promise<string[]> {
    return this.o.manager.onlineUsers(this.o.clock.now());
  }

  /** `get_online_count` */
  getOnlineCount(): Promise<number> {
    return this.o.manager.onlineCount(this.o.clock.now());
  }

  /** Online users holding a socket in `roomId`, from the manager (not the view). */
  roomMembers(roomId: string): Promise<string[]> {
    return this.o.manager.roomMembers(roomId, this.o.clock.now());
  }

  /**
   * Arms the flush tick for the next instant of the `flushMs` grid strictly after now, unless it
   * is armed, ticks are off (`flushMs` 0: flushes are called), or the tracker is not started.
   */
  private wantFlush(): void {
    const ms = this.o.flushMs;
    if (this.tick !== null || ms <= 0 || this.tickOrigin === null) return;
    const since = this.o.clock.now() - this.tickOrigin;
    this.tick = this.scheduler.after(ms - (((since % ms) + ms) % ms), () => {
      this.tick = null;
      void this.flush().catch(() => {});
    });
  }

  /**
   * Writes everything queued in one round trip and reports what it changed. Concurrent calls
   * share one flush. On failure the queue is kept (deduplicated, so its size is bounded by
   * distinct users and rooms) for the next tick.
   */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing.then(() => (this.pendingCount() ? this.flush() : undefined));
    if (this.pendingCount() === 0) return Promise.resolve();
    this.lastFlushAt = this.o.clock.now();
    const heartbeats = this.heartbeats;
    const holdOps = this.holdOps;
    const typingOps = this.typingOps;
    this.heartbeats = new Set();
    this.holdOps = new Map();
    this.typingOps = new Map();
    const batch: PresenceBatch = { instance: this.instanceId, heartbeats: [...heartbeats], holds: [], releases: [], typing: [], typingStops: [] };
    for (const [k, op] of holdOps) (op === "hold" ? batch.holds : batch.releases).push(unkey(k));
    for (const [k, op] of typingOps) (op === "start" ? batch.typing : batch.typingStops!).push(unkey(k));
    this.flushing = (async () => {
      try {
        const changes = await this.o.manager.apply(batch, this.o.clock.now());
        this.stats.flushes++;
        this.stats.heartbeats += batch.heartbeats.length;
        this.setFailing(false);
        this.report(changes, "online");
      } catch (err) {
        this.stats.flushFailures++;
        this.setFailing(true, err);
        // Keep what was not written; newer operations queued meanwhile take precedence.
        for (const u of heartbeats) this.heartbeats.add(u);
        for (const [k, op] of holdOps) if (!this.holdOps.has(k)) this.holdOps.set(k, op);
        for (const [k, op] of typingOps) if (!this.typingOps.has(k)) this.typingOps.set(k, op);
        this.wantFlush(); // tried again at the next tick, as long as it fails
        throw err;
      } finally {
        this.flushing = null;
      }
    })();
    return this.flushing;
  }

  /**
   * One expiry cycle: refreshes this instance's holds before they lapse, writes what is queued,
   * then removes expired users, holds and typers (O(expiries), a script call per `expireLimit`)
   * and reports what that changed.
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
        for (;;) {
          const changes = await this.o.manager.expire(now, this.o.expireLimit ?? 1000);
          this.stats.expirySweeps++;
          this.setFailing(false);
          this.report(changes, "offline");
          if (!changes.more) break;
        }
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

  /** Applies a write's counts to the view, then tells the listeners (counts first, so they read the new view). */
  private report(changes: PresenceChanges, status: PresenceStatus): void {
    const changed = new Map<string, RoomCounts>();
    for (const [room, c] of changes.counts) if (this.merge(room, c)) changed.set(room, c);
    if (changed.size) this.emitCounts(changed, "local");
    for (const m of changes.joins) this.emit(this.membershipListeners, m, "join");
    for (const m of changes.leaves) this.emit(this.membershipListeners, m, "leave");
    for (const t of changes.transitions) this.emit(this.transitionListeners, t, status);
  }

  /** Rooms stay in the view when they empty (their version keeps stale publications out). */
  private setView(roomId: string, c: RoomCounts): void {
    this.view.set(roomId, c);
  }

  private emitCounts(changed: Map<string, RoomCounts>, origin: CountsOrigin): void {
    this.emit(this.countListeners, changed, origin);
  }

  private emit<T extends unknown[]>(listeners: Listener<T>[], ...args: T): void {
    for (const fn of listeners) {
      try {
        fn(...args);
      } catch (err) {
        this.o.log.error("presence: listener failed", { err });
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

/** True when two rooms' numbers look the same to a client (versions aside). */
export function sameNumbers(a: RoomCounts, b: RoomCounts): boolean {
  return a.online === b.online && a.typing === b.typing && a.holders === b.holders && a.typingUsers.join("\n") === b.typingUsers.join("\n");
}
