/**
 * The Matrix presence aggregator's state (seed 003 §3.1 and §5; the "Presence semantics" of the
 * Matrix brief): who is joined to each tracked Matrix room, each member's presence, each room's
 * typing list. It turns `/sync` responses into per-city-room changes: which people started or
 * stopped counting as online, the complete typing list of each room whose list changed, user
 * presence changes (seed 003 §4.2) and room activity (receipts, membership).
 *
 * Rules:
 * - A member counts as online while their presence is `online` or a value this code does not know
 *   (Synapse's `org.matrix.msc3026.busy`); `unavailable` (idle) and `offline` do not count. A user
 *   the homeserver sent no presence for is offline.
 * - The bot (MATRIX_USER_ID) is never counted and never typing; presence of users in no tracked
 *   room is ignored.
 * - `m.typing` replaces the room's list; receipts are activity, except in an initial sync (there
 *   they are history).
 * - People are keyed by {@link personOf}: a Matrix account on the bot's homeserver whose localpart
 *   is a city user id (`@u_alice:daarion.space`) is that city user (`u_alice`), so a person with a
 *   socket and a Matrix client counts once; everyone else is their Matrix id.
 *
 * Pure and synchronous (no I/O, no timers): it runs in the sync worker and, for the bench, on the
 * main thread; `test/unit/matrix-aggregator.test.ts` drives it with hand-made responses.
 */
import { USER_ID_RE } from "../../ids.ts";

/** A city room the aggregator tracks, with its Matrix room (resolved from an alias when needed). */
export interface TrackedRoom {
  /** City room id (`room_city_<slug>`). */
  roomId: string;
  /** Matrix room id (`!x:server`). */
  matrixRoomId: string;
}

/** One `/sync` response (every key optional but `next_batch`, as the spec allows). */
export interface SyncResponse {
  next_batch: string;
  presence?: { events?: MatrixEvent[] };
  rooms?: {
    join?: Record<string, JoinedRoom>;
    leave?: Record<string, unknown>;
  };
}

export interface JoinedRoom {
  state?: { events?: MatrixEvent[] };
  timeline?: { events?: MatrixEvent[]; limited?: boolean };
  ephemeral?: { events?: MatrixEvent[] };
}

export interface MatrixEvent {
  type?: string;
  sender?: string;
  state_key?: string;
  content?: Record<string, unknown>;
  origin_server_ts?: number;
}

/** Seed 003 §4.2's user-level presence, for a tracked user whose presence changed. */
export interface UserPresenceChange {
  matrix_user_id: string;
  status: string;
  /** Epoch ms: now − `last_active_ago` when the event carries it, else when it was seen. */
  last_active_ts: number;
}

/** What one response changed, keyed by city room id. */
export interface AggregateChanges {
  /**
   * `true` after an initial (or `full_state`) sync: `online` then lists every (room, person)
   * counted online, and whoever is not listed is not online any more.
   */
  full: boolean;
  online: { roomId: string; person: string }[];
  offline: { roomId: string; person: string }[];
  /** The complete typing list (people) of each room whose list changed. */
  typing: Map<string, string[]>;
  users: UserPresenceChange[];
  /** Activity (receipts, membership changes) per room: the latest time, epoch ms. */
  activity: Map<string, number>;
  /** Matrix rooms the bot is no longer joined to (reported, and dropped from the state). */
  leftRooms: string[];
  /** Tracked rooms whose timeline was `limited`: their member list must be re-read. */
  limitedRooms: string[];
}

interface UserState {
  status: string;
  lastActiveTs: number;
  /** Tracked Matrix rooms the user is joined to. */
  rooms: Set<string>;
}

const NOT_ONLINE = new Set(["offline", "unavailable"]);

/**
 * The person a Matrix user is counted as (see the module comment).
 * @param serverName the bot's homeserver name (the part of MATRIX_USER_ID after the first `:`)
 */
export function personOf(matrixUserId: string, serverName: string): string {
  const colon = matrixUserId.indexOf(":");
  if (colon < 2 || matrixUserId[0] !== "@") return matrixUserId;
  const localpart = matrixUserId.slice(1, colon);
  return matrixUserId.slice(colon + 1) === serverName && USER_ID_RE.test(localpart) ? localpart : matrixUserId;
}

/** The server name of a Matrix id (`@bot:daarion.space` → `daarion.space`). */
export function serverNameOf(matrixId: string): string {
  const colon = matrixId.indexOf(":");
  return colon < 0 ? "" : matrixId.slice(colon + 1);
}

export class MatrixAggregator {
  /** Matrix room → city room, for tracked rooms. */
  private tracked = new Map<string, string>();
  /** Matrix room → joined members (Matrix ids, the bot excluded). */
  private readonly members = new Map<string, Set<string>>();
  private readonly users = new Map<string, UserState>();
  /** Matrix room → typing list (people) as last reported. */
  private readonly typing = new Map<string, string[]>();
  /** City room → people counted online, as last reported. */
  private readonly counted = new Map<string, Set<string>>();
  private readonly serverName: string;
  /** True once the homeserver sent any presence at all (a homeserver with presence disabled never does). */
  presenceSeen = false;

  constructor(
    private readonly botUserId: string,
    rooms: TrackedRoom[] = [],
  ) {
    this.serverName = serverNameOf(botUserId);
    this.setRooms(rooms);
  }

  /** Tracked rooms changed: state of rooms no longer tracked is dropped (the next full sync fills new ones). */
  setRooms(rooms: TrackedRoom[]): void {
    this.tracked = new Map(rooms.map((r) => [r.matrixRoomId, r.roomId]));
    for (const id of [...this.members.keys()]) if (!this.tracked.has(id)) this.dropRoom(id);
    for (const id of [...this.typing.keys()]) if (!this.tracked.has(id)) this.typing.delete(id);
  }

  /** Matrix ids of the tracked rooms (the sync filter's `room.rooms`). */
  trackedMatrixRooms(): string[] {
    return [...this.tracked.keys()];
  }

  /** Online people per city room, as last reported. */
  onlineByRoom(): ReadonlyMap<string, ReadonlySet<string>> {
    return this.counted;
  }

  /** How many Matrix users the tracked rooms have (for /metrics and the bench). */
  memberCount(): number {
    let n = 0;
    for (const u of this.users.values()) if (u.rooms.size > 0) n++;
    return n;
  }

  /**
   * Applies one `/sync` response.
   * @param full true for an initial or `full_state` sync: member lists and presence are replaced
   * @param now epoch ms, for `last_active_ts`
   */
  apply(res: SyncResponse, full: boolean, now: number): AggregateChanges {
    const dirty = new Set<string>();
    const activity = new Map<string, number>();
    const typingChanged = new Map<string, string[]>();
    const limitedRooms: string[] = [];
    const leftRooms: string[] = [];
    const userChanges: UserPresenceChange[] = [];
    if (full) {
      // Presence is sent only on change: a full sync carries everyone not offline; the rest are offline.
      for (const [id, u] of this.users) {
        u.status = "offline";
        if (u.rooms.size === 0) this.users.delete(id);
      }
    }
    for (const [matrixRoomId, room] of Object.entries(res.rooms?.join ?? {})) {
      const cityRoom = this.tracked.get(matrixRoomId);
      if (!cityRoom) continue;
      if (full) this.resetMembers(matrixRoomId);
      for (const ev of room.state?.events ?? []) this.applyMembership(matrixRoomId, ev, dirty);
      for (const ev of room.timeline?.events ?? []) {
        if (this.applyMembership(matrixRoomId, ev, dirty) && !full) bump(activity, cityRoom, ev.origin_server_ts ?? now);
      }
      if (room.timeline?.limited && !full) limitedRooms.push(matrixRoomId);
      for (const ev of room.ephemeral?.events ?? []) {
        if (ev.type === "m.typing") {
          const ids = Array.isArray(ev.content?.user_ids) ? (ev.content.user_ids as unknown[]) : [];
          const list = [...new Set(ids.filter((u): u is string => typeof u === "string" && u !== this.botUserId).map((u) => personOf(u, this.serverName)))].sort();
          const prev = this.typing.get(matrixRoomId) ?? [];
          if (list.join("\n") !== prev.join("\n")) {
            if (list.length) this.typing.set(matrixRoomId, list);
            else this.typing.delete(matrixRoomId);
            typingChanged.set(cityRoom, list);
          }
        } else if (ev.type === "m.receipt" && !full) {
          const ts = latestReceipt(ev.content, this.botUserId);
          if (ts !== null) bump(activity, cityRoom, ts);
        }
      }
    }
    for (const matrixRoomId of Object.keys(res.rooms?.leave ?? {})) {
      const cityRoom = this.tracked.get(matrixRoomId);
      if (!cityRoom) continue;
      leftRooms.push(matrixRoomId);
      this.dropRoom(matrixRoomId);
      if (this.typing.delete(matrixRoomId)) typingChanged.set(cityRoom, []);
      dirty.add(matrixRoomId);
    }
    for (const ev of res.presence?.events ?? []) {
      if (ev.type !== "m.presence" || typeof ev.sender !== "string" || ev.sender === this.botUserId) continue;
      const presence = ev.content?.presence;
      if (typeof presence !== "string") continue;
      this.presenceSeen = true;
      // Kept for users in no tracked room too (they share some room with the bot): their join may come later.
      let u = this.users.get(ev.sender);
      if (!u) this.users.set(ev.sender, (u = { status: "offline", lastActiveTs: 0, rooms: new Set() }));
      const ago = ev.content?.last_active_ago;
      const lastActiveTs = typeof ago === "number" && ago >= 0 ? now - ago : now;
      const changed = u.status !== presence;
      u.status = presence;
      u.lastActiveTs = lastActiveTs;
      if (u.rooms.size === 0) {
        if (presence === "offline") this.users.delete(ev.sender);
        continue; // presence outside the tracked rooms is not reported
      }
      if (changed || full) userChanges.push({ matrix_user_id: ev.sender, status: presence, last_active_ts: lastActiveTs });
      for (const r of u.rooms) dirty.add(r);
    }
    if (full) for (const r of this.tracked.keys()) dirty.add(r);
    const { online, offline } = this.recount(dirty, full);
    return { full, online, offline, typing: typingChanged, users: userChanges, activity, leftRooms, limitedRooms };
  }

  /**
   * Replaces a room's member list (`GET /rooms/{id}/joined_members` after a `limited` timeline).
   * @returns the online changes it caused
   */
  seedMembers(matrixRoomId: string, userIds: string[]): Pick<AggregateChanges, "online" | "offline"> {
    if (!this.tracked.has(matrixRoomId)) return { online: [], offline: [] };
    this.resetMembers(matrixRoomId);
    for (const u of userIds) this.join(matrixRoomId, u);
    return this.recount(new Set([matrixRoomId]), false);
  }

  /** Each tracked room's current typing list, by city room (for a full report). */
  typingByRoom(): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const [m, list] of this.typing) {
      const city = this.tracked.get(m);
      if (city) out.set(city, list);
    }
    return out;
  }

  /** @returns true when `ev` is a membership event of a tracked room (it may not change anything) */
  private applyMembership(matrixRoomId: string, ev: MatrixEvent, dirty: Set<string>): boolean {
    if (ev.type !== "m.room.member" || typeof ev.state_key !== "string") return false;
    const membership = ev.content?.membership;
    if (membership === "join") this.join(matrixRoomId, ev.state_key);
    else this.leave(matrixRoomId, ev.state_key);
    dirty.add(matrixRoomId);
    return true;
  }

  private join(matrixRoomId: string, userId: string): void {
    if (userId === this.botUserId) return;
    let set = this.members.get(matrixRoomId);
    if (!set) this.members.set(matrixRoomId, (set = new Set()));
    set.add(userId);
    let u = this.users.get(userId);
    if (!u) this.users.set(userId, (u = { status: "offline", lastActiveTs: 0, rooms: new Set() }));
    u.rooms.add(matrixRoomId);
  }

  private leave(matrixRoomId: string, userId: string): void {
    this.members.get(matrixRoomId)?.delete(userId);
    const u = this.users.get(userId);
    if (!u) return;
    u.rooms.delete(matrixRoomId);
    if (u.rooms.size === 0 && u.status === "offline") this.users.delete(userId);
  }

  private resetMembers(matrixRoomId: string): void {
    for (const u of [...(this.members.get(matrixRoomId) ?? [])]) this.leave(matrixRoomId, u);
  }

  private dropRoom(matrixRoomId: string): void {
    this.resetMembers(matrixRoomId);
    this.members.delete(matrixRoomId);
  }

  /** Recomputes who counts online in the dirty rooms and diffs it against what was reported. */
  private recount(dirty: Set<string>, full: boolean): Pick<AggregateChanges, "online" | "offline"> {
    const online: AggregateChanges["online"] = [];
    const offline: AggregateChanges["offline"] = [];
    // One Matrix room maps to one city room (a unique index), so a city room's set is its Matrix room's.
    for (const matrixRoomId of dirty) {
      const cityRoom = this.tracked.get(matrixRoomId);
      const now = new Set<string>();
      if (cityRoom) {
        for (const userId of this.members.get(matrixRoomId) ?? []) {
          const u = this.users.get(userId);
          if (u && !NOT_ONLINE.has(u.status)) now.add(personOf(userId, this.serverName));
        }
      }
      const key = cityRoom ?? matrixRoomId;
      const before = this.counted.get(key) ?? new Set<string>();
      for (const p of now) if (full || !before.has(p)) online.push({ roomId: key, person: p });
      for (const p of before) if (!now.has(p)) offline.push({ roomId: key, person: p });
      if (now.size) this.counted.set(key, now);
      else this.counted.delete(key);
    }
    if (full) {
      // Rooms no longer tracked at all: everyone in them stops counting.
      const trackedCity = new Set(this.tracked.values());
      for (const [room, set] of this.counted) {
        if (trackedCity.has(room)) continue;
        for (const p of set) offline.push({ roomId: room, person: p });
        this.counted.delete(room);
      }
    }
    return { online, offline };
  }
}

function bump(map: Map<string, number>, key: string, ts: number): void {
  if (ts > (map.get(key) ?? -Infinity)) map.set(key, ts);
}

/** The newest receipt time in an `m.receipt` content (`{$event: {m.read: {@user: {ts}}}}`), the bot's own aside. */
function latestReceipt(content: Record<string, unknown> | undefined, bot: string): number | null {
  let latest: number | null = null;
  for (const byType of Object.values(content ?? {})) {
    if (!byType || typeof byType !== "object") continue;
    for (const byUser of Object.values(byType as Record<string, unknown>)) {
      if (!byUser || typeof byUser !== "object") continue;
      for (const [user, r] of Object.entries(byUser as Record<string, unknown>)) {
        const ts = (r as { ts?: unknown } | null)?.ts;
        if (user !== bot && typeof ts === "number" && (latest === null || ts > latest)) latest = ts;
      }
    }
  }
  return latest;
}
