/**
 * MatrixPresenceService: folds Matrix presence into the city's presence (seed 003; SPEC "Presence":
 * "Matrix presence … adds its users to the rooms mapped by matrix_room_id/matrix_room_alias").
 *
 * - One syncing instance: every instance tries to take the `matrix-sync` lease (Redis with
 *   REDIS_URL, else in-process) every third of MATRIX_LEASE_TTL_MS; the holder runs the sync loop
 *   (in the sync worker, {@link WorkerSyncHost}) and the others only consume its events. A holder
 *   that dies is replaced within 2× the TTL; one that stops gives the lease up at once.
 * - The holder writes Matrix users into the presence store as one more instance would: a person
 *   online in a mapped room *holds* that room (refreshed like a socket's hold) and heartbeats while
 *   online; the Matrix typing list is written as typing and stopped when the list drops them. So
 *   `members_online`, the presence socket's frames and `city.presence.room.<slug>` (published by
 *   the presence service, throttled as seed 003 §5.3 says) are one merged truth per room, each
 *   person counted once ({@link personOf} says who is the same person).
 * - Seed 003 §4.2: each tracked user's presence change goes out on
 *   `city.presence.user.<localpart>` (the localpart with `.`, `*`, `>`, `=` and other characters
 *   outside `[a-z0-9_/+-]` written as `=xx`, so it stays one subject token).
 * - `next_batch` is saved in the store (`matrix_sync_state`) as soon as the loop has it; a new
 *   holder resumes from it with a `full_state` sync.
 * - The holder announces the loop's state on `city.presence.matrix` every lease renewal, so every
 *   instance's `/readyz` and `/metrics` show it.
 */
import type { Clock, Scheduler, Timer } from "../../clock.ts";
import type { Broker } from "../../engine/broker/broker.ts";
import type { Lease } from "../../engine/lease.ts";
import { slugOfRoom } from "../../engine/protocol.ts";
import type { PresenceTracker } from "../../engine/presence/presence.ts";
import type { Logger } from "../../log.ts";
import type { Store } from "../../storage/store.ts";
import type { AggregateChanges, TrackedRoom } from "./aggregator.ts";
import type { SyncHost, SyncSettings } from "./host.ts";
import type { LoopStatus, RoomMapping } from "./sync-loop.ts";

/** Seed 003 §4.2: user-level presence, `city.presence.user.<localpart>`. */
export const USER_PRESENCE_SUBJECT = "city.presence.user";
/** The sync loop's state, from the lease holder to every instance. */
export const MATRIX_STATUS_SUBJECT = "city.presence.matrix";
const LEASE_NAME = "matrix-sync";

/** The loop's settings without what each start reads afresh, plus the mapping template and the lease. */
export interface MatrixSettings extends Omit<SyncSettings, "since" | "rooms"> {
  /** `#city_{slug}:server`-style template giving every room without a mapping an alias; null: none. */
  aliasTemplate: string | null;
  leaseTtlMs: number;
}

export interface MatrixPresenceOptions {
  settings: MatrixSettings;
  tracker: PresenceTracker;
  broker: Broker;
  store: Store;
  lease: Lease;
  /** Builds a host for the loop (a worker, or the main thread). */
  createHost: () => SyncHost;
  /** This instance's name in the lease. */
  instanceId: string;
  presenceTtlMs: number;
  typingTtlMs: number;
  clock: Clock;
  scheduler: Scheduler;
  log: Logger;
  /** A room's activity (a receipt) changed no number: its event should go out again. */
  onActivity?: (roomId: string) => void;
}

/** The loop's state as `/readyz` and `/metrics` show it, on every instance. */
export interface MatrixReport {
  /** This instance holds the lease and runs the loop. */
  leader: boolean;
  /** The holder's loop state (`following` when another instance's report is older than 3 lease TTLs: `unknown`). */
  state: LoopStatus["state"] | "following" | "unknown";
  presence: "ok" | "unknown";
  /** Seconds since the last successful sync (null before one). */
  lastSyncAgeSeconds: number | null;
  backoffMs: number;
  errors: LoopStatus["errors"];
  rooms: number;
  members: number;
  /** Matrix user changes published (`city.presence.user.*`) by this instance. */
  usersPublished: number;
}

/** `@john.doe:hs` → `john=2edoe`: a localpart as one NATS subject token. */
export function localpartToken(matrixUserId: string): string {
  const colon = matrixUserId.indexOf(":");
  const local = matrixUserId.slice(matrixUserId.startsWith("@") ? 1 : 0, colon < 0 ? undefined : colon);
  return local.replace(/[^a-z0-9_/+-]/g, (c) => `=${c.charCodeAt(0).toString(16).padStart(2, "0")}`) || "=";
}

export class MatrixPresenceService {
  private leading = false;
  private host: SyncHost | null = null;
  private timers: Timer[] = [];
  private tickRunning: Promise<void> | null = null;
  private closed = false;
  /** City room → people the loop counts online there (what this instance holds for Matrix). */
  private readonly held = new Map<string, Set<string>>();
  /** City room → Matrix typing list (people). */
  private readonly typing = new Map<string, string[]>();
  /** City room → the Matrix room the loop resolved (alias or id). */
  private resolved = new Map<string, string>();
  private loop: LoopStatus | null = null;
  private remote: { status: LoopStatus; at: number } | null = null;
  private savingSince: Promise<void> = Promise.resolve();
  private pendingSince: string | null = null;
  private unsubscribe: (() => void) | null = null;
  private usersPublished = 0;

  constructor(private readonly o: MatrixPresenceOptions) {}

  /** Subscribes to the holder's status and starts competing for the lease. */
  start(): void {
    this.unsubscribe = this.o.broker.subscribe(MATRIX_STATUS_SUBJECT, (_s, payload) => {
      try {
        const m = JSON.parse(payload) as { instance?: string; status?: LoopStatus };
        if (m.instance !== this.o.instanceId && m.status && typeof m.status.state === "string") this.remote = { status: m.status, at: this.o.clock.now() };
      } catch {
        /* not ours to judge: a malformed status is ignored */
      }
    });
    const { scheduler } = this.o;
    this.timers.push(scheduler.every(Math.max(100, Math.floor(this.o.settings.leaseTtlMs / 3)), () => void this.tick()));
    // Matrix people stay online in the presence store while the loop says so.
    this.timers.push(scheduler.every(Math.max(100, Math.floor(this.o.presenceTtlMs / 3)), () => this.refreshHeartbeats()));
    this.timers.push(scheduler.every(Math.max(100, Math.floor(this.o.typingTtlMs / 2)), () => this.refreshTyping()));
    void this.tick();
  }

  /** Stops the loop, gives the lease up and takes Matrix people out of the rooms (they count again on the next holder). */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) t.cancel();
    this.timers = [];
    this.unsubscribe?.();
    await this.tickRunning;
    if (this.leading) await this.follow("stopping");
    await this.o.lease.release(this.o.instanceId).catch(() => {});
  }

  /** The mapping may have changed (a room was created or patched, here or on another instance). */
  roomsChanged(): void {
    if (!this.leading || !this.host) return;
    void this.mapping().then(
      (rooms) => this.host?.setRooms(rooms),
      (err) => this.o.log.warn("matrix: could not read the room mapping", { err }),
    );
  }

  isLeader(): boolean {
    return this.leading;
  }

  /** Presence availability for frames: the loop's own, or the holder's as last announced. */
  presenceState(): "ok" | "unknown" {
    return (this.leading ? this.loop?.presence : this.remote?.status.presence) ?? "unknown";
  }

  /** What a room's §4.1 event names as its Matrix room and alias when the row leaves them out. */
  matrixRoomOf(roomId: string): { id: string | null; alias: string | null } {
    return { id: this.resolved.get(roomId) ?? null, alias: this.aliasFor(slugOfRoom(roomId)) };
  }

  report(): MatrixReport {
    const now = this.o.clock.now();
    const s = this.leading ? this.loop : this.remote && now - this.remote.at <= 3 * this.o.settings.leaseTtlMs ? this.remote.status : null;
    return {
      leader: this.leading,
      state: s ? (this.leading ? s.state : s.state === "syncing" ? "following" : s.state) : this.leading ? "starting" : "unknown",
      presence: s?.presence ?? "unknown",
      lastSyncAgeSeconds: s?.lastSyncAt ? Math.max(0, Math.round((now - s.lastSyncAt) / 1000)) : null,
      backoffMs: s?.backoffMs ?? 0,
      errors: s?.errors ?? {},
      rooms: s?.rooms ?? 0,
      members: s?.members ?? 0,
      usersPublished: this.usersPublished,
    };
  }

  /** One lease round: take or renew it; start or stop the loop on a change. */
  private tick(): Promise<void> {
    if (this.tickRunning || this.closed) return this.tickRunning ?? Promise.resolve();
    this.tickRunning = (async () => {
      let held = false;
      try {
        held = await this.o.lease.acquire(this.o.instanceId, this.o.settings.leaseTtlMs, this.o.clock.now());
      } catch (err) {
        this.o.log.warn("matrix: the lease engine is unreachable; not syncing meanwhile", { err });
      }
      if (this.closed) return;
      if (held && !this.leading) await this.lead();
      else if (!held && this.leading) await this.follow("lost the lease");
      if (this.leading && this.loop) this.announce();
    })().finally(() => (this.tickRunning = null));
    return this.tickRunning;
  }

  private async lead(): Promise<void> {
    this.leading = true;
    const s = this.o.settings;
    const [since, rooms] = await Promise.all([this.o.store.matrixSyncToken(s.userId).catch(() => null), this.mapping().catch(() => [])]);
    this.o.log.info("matrix: this instance runs the sync loop", { instance: this.o.instanceId, resume: since !== null, rooms: rooms.length });
    const { aliasTemplate: _template, leaseTtlMs: _ttl, ...loop } = s;
    const settings: SyncSettings = { ...loop, since, rooms };
    this.startHost(settings);
  }

  private startHost(settings: SyncSettings): void {
    const host = this.o.createHost();
    this.host = host;
    host.start(settings, {
      onSince: (nextBatch) => {
        settings.since = nextBatch;
        this.saveSince(nextBatch);
      },
      onChanges: (c) => this.apply(c),
      onMapping: (rooms: TrackedRoom[]) => (this.resolved = new Map(rooms.map((r) => [r.roomId, r.matrixRoomId]))),
      onStatus: (status) => {
        this.loop = status;
        this.announce();
      },
      log: (level, msg, fields) => this.o.log[level](msg, fields),
      onDead: (reason) => {
        if (this.host !== host || !this.leading) return;
        this.o.log.error("matrix: the sync loop died; restarting it", { reason });
        this.host = null;
        this.scheduleRestart(settings);
      },
    });
  }

  /**
   * Saves `next_batch`: at most one write in flight, and only the newest waiting one after it (a
   * churning homeserver answers many syncs a second; each older token is superseded anyway).
   */
  private saveSince(nextBatch: string): void {
    const idle = this.pendingSince === null;
    this.pendingSince = nextBatch;
    if (!idle) return;
    this.savingSince = (async () => {
      while (this.pendingSince !== null) {
        const token = this.pendingSince;
        try {
          await this.o.store.saveMatrixSyncToken(this.o.settings.userId, token);
        } catch (err) {
          this.o.log.warn("matrix: could not save next_batch", { err });
        }
        if (this.pendingSince === token) this.pendingSince = null;
      }
    })();
  }

  private scheduleRestart(settings: SyncSettings): void {
    this.timers.push(this.o.scheduler.after(1000, () => {
      if (this.leading && !this.host && !this.closed) this.startHost(settings);
    }));
  }

  private async follow(why: string): Promise<void> {
    this.leading = false;
    const host = this.host;
    this.host = null;
    await host?.stop();
    await this.savingSince;
    this.o.log.info("matrix: this instance no longer runs the sync loop", { why });
    for (const [roomId, people] of this.held) for (const p of people) this.o.tracker.release(roomId, p);
    this.held.clear();
    for (const [roomId, list] of this.typing) for (const p of list) this.o.tracker.stopTyping(roomId, p);
    this.typing.clear();
    this.loop = null;
  }

  /** The rooms to track: each room's own Matrix id or alias, else the alias template's. */
  private async mapping(): Promise<RoomMapping[]> {
    const rows = await this.o.store.listRoomMatrixMappings();
    const out: RoomMapping[] = [];
    for (const r of rows) {
      const alias = r.matrix_room_alias ?? (r.matrix_room_id ? null : this.aliasFor(r.slug));
      if (r.matrix_room_id || alias) out.push({ roomId: r.id, matrixRoomId: r.matrix_room_id, alias });
    }
    return out;
  }

  private aliasFor(slug: string): string | null {
    return this.o.settings.aliasTemplate ? this.o.settings.aliasTemplate.replaceAll("{slug}", slug) : null;
  }

  /** Applies one response's changes to the presence store's queue (written at the next flush). */
  private apply(c: AggregateChanges): void {
    if (!this.leading) return;
    const { tracker } = this.o;
    if (c.full) {
      // Whoever the full report leaves out is not online any more.
      const listed = new Map<string, Set<string>>();
      for (const { roomId, person } of c.online) {
        let set = listed.get(roomId);
        if (!set) listed.set(roomId, (set = new Set()));
        set.add(person);
      }
      for (const [roomId, people] of this.held) for (const p of people) if (!listed.get(roomId)?.has(p)) this.drop(roomId, p);
    }
    for (const { roomId, person } of c.offline) this.drop(roomId, person);
    for (const { roomId, person } of c.online) {
      let set = this.held.get(roomId);
      if (!set) this.held.set(roomId, (set = new Set()));
      if (set.has(person)) continue;
      set.add(person);
      tracker.hold(roomId, person);
      tracker.heartbeat(person);
    }
    if (c.full) for (const roomId of [...this.typing.keys()]) if (!c.typing.has(roomId)) c.typing.set(roomId, []);
    for (const [roomId, list] of c.typing) {
      const prev = this.typing.get(roomId) ?? [];
      for (const p of prev) if (!list.includes(p)) tracker.stopTyping(roomId, p);
      for (const p of list) tracker.typing(roomId, p);
      if (list.length) this.typing.set(roomId, list);
      else this.typing.delete(roomId);
    }
    for (const u of c.users) {
      this.o.broker.publish(`${USER_PRESENCE_SUBJECT}.${localpartToken(u.matrix_user_id)}`, JSON.stringify({ type: "user.presence", ...u }));
      this.usersPublished++;
    }
    for (const roomId of c.activity.keys()) this.o.onActivity?.(roomId);
  }

  private drop(roomId: string, person: string): void {
    const set = this.held.get(roomId);
    if (!set?.delete(person)) return;
    if (set.size === 0) this.held.delete(roomId);
    this.o.tracker.release(roomId, person);
  }

  private refreshHeartbeats(): void {
    if (!this.leading) return;
    const people = new Set<string>();
    for (const set of this.held.values()) for (const p of set) people.add(p);
    for (const p of people) this.o.tracker.heartbeat(p);
  }

  private refreshTyping(): void {
    if (!this.leading) return;
    for (const [roomId, list] of this.typing) for (const p of list) this.o.tracker.typing(roomId, p);
  }

  private announce(): void {
    if (!this.loop) return;
    this.o.broker.publish(MATRIX_STATUS_SUBJECT, JSON.stringify({ instance: this.o.instanceId, status: this.loop }));
  }
}
