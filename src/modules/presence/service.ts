/**
 * PresenceService: turns what the presence tracker observes into frames and NATS events (seed 000
 * §5, seed 003 §4–§6), each exactly once per client across instances.
 *
 * - Transitions: the one instance that detects a user's online/offline transition publishes it on
 *   `city.presence.transition` with the rooms the user holds anywhere; every instance (itself
 *   included) sends `presence.update` to its presence sockets and `room.presence` to its own
 *   sockets in those rooms. `presence.update` goes to every listening socket, so a reconnect storm
 *   of n users costs n² deliveries: it is sent only while at most PRESENCE_UPDATES_MAX_AUDIENCE
 *   local sockets listen (sockets opened with `?events=counts` do not).
 * - Memberships: a user's first socket in a room on any instance (and their last one leaving) is
 *   announced once, by the instance whose write saw it, as `room.join` + `room.presence` to the
 *   room's sockets everywhere, while the room has at most ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS users
 *   (a join: as the write that recorded it left the room; a leave: as the room was before it).
 * - Room counts: the instance whose write changed a room's numbers publishes them on
 *   `city.presence.room.<slug>` in seed 003 §4.1's payload (plus `version` and `connected_count`)
 *   and sends `{type:"room.presence", …}` to its presence sockets: at once when the online count
 *   changed, otherwise at most once per ROOM_PRESENCE_THROTTLE_MS per room (seed 003 §5.3). Other
 *   instances apply the newest version and tell their sockets. Every instance resyncs all numbers
 *   from the presence store every PRESENCE_RESYNC_MS and when the broker link comes back.
 */
import { systemScheduler, type Clock, type Scheduler, type Timer } from "../../clock.ts";
import type { Broker } from "../../engine/broker/broker.ts";
import type { Hub } from "../../engine/hub.ts";
import type { Membership, PresenceStatus, PresenceTracker, RoomCounts } from "../../engine/presence/presence.ts";
import {
  encodePresenceSnapshot, encodePresenceUpdate, encodeRoomMembership, encodeRoomPresenceCounts, encodeRoomUserPresence, PRESENCE_COUNTS_TOPIC,
  PRESENCE_USERS_TOPIC, slugOfRoom, type RoomPresenceCounts,
} from "../../engine/protocol.ts";
import type { RoomStreams } from "../../engine/streams.ts";
import { roomIdForSlug } from "../../ids.ts";
import type { Logger } from "../../log.ts";
import type { RoomMatrixMapping, Store } from "../../storage/store.ts";

/** Broker subject carrying `{user_id, status, rooms}` for each transition, once, from its detector. */
export const TRANSITION_SUBJECT = "city.presence.transition";
/** Seed 003 §4.1: room-level presence, `city.presence.room.<slug>`. */
export const ROOM_PRESENCE_SUBJECT = "city.presence.room";
/** How long the room list (for snapshots and the Matrix ids of §4.1) is reused, ms. */
const ROOM_LIST_TTL_MS = 10_000;

export interface PresenceServiceOptions {
  presence: PresenceTracker;
  hub: Hub;
  streams: RoomStreams;
  broker: Broker;
  store: Store;
  clock: Clock;
  scheduler?: Scheduler;
  log: Logger;
  throttleMs: number;
  /** Per-user room events only while the room has at most this many users holding a socket. */
  membershipEventsMaxMembers: number;
  /** `presence.update` only while at most this many local sockets listen for it. */
  updatesMaxAudience: number;
  /** Full reload of every room's numbers, ms (0: only on broker reconnects). */
  resyncMs?: number;
  /** Matrix presence as the sync loop sees it (`null`: no homeserver configured). */
  matrixPresence?: () => "ok" | "unknown" | null;
  /** The Matrix room and alias the aggregator uses for a room whose row leaves them out (alias template, resolved alias). */
  matrixRoomOf?: (roomId: string) => { id: string | null; alias: string | null };
}

/** Seed 003 §4.1's payload, plus what instances need to agree (`version`, `connected_count`). */
export interface RoomPresenceEvent {
  type: "room.presence";
  room_slug: string;
  matrix_room_id: string | null;
  matrix_room_alias: string | null;
  online_count: number;
  typing_count: number;
  typing_users: string[];
  last_event_ts: number;
  /** Grows with every change of the room's numbers; a consumer keeps the highest. */
  version: number;
  /** Users with a socket open in the room, online or not. */
  connected_count: number;
  /** With a Matrix homeserver: `ok`, or `unknown` while it has sent no presence (presence may be disabled there). */
  matrix_presence?: "ok" | "unknown";
}

interface Throttle {
  sentAt: number;
  sentOnline: number | null;
  timer: Timer | null;
}

export class PresenceService {
  private readonly throttles = new Map<string, Throttle>();
  /** The numbers last sent to this instance's presence sockets, per room. */
  private readonly shown = new Map<string, { online: number; typing: number }>();
  private rooms: { list: RoomMatrixMapping[]; byId: Map<string, RoomMatrixMapping>; at: number } | null = null;
  /** Bumped by {@link roomsChanged}: a room list read that started before it is not kept. */
  private roomsGeneration = 0;
  private readonly unsubscribe: (() => void)[] = [];
  private resyncTimer: Timer | null = null;
  private readonly scheduler: Scheduler;
  /** Local presence sockets subscribed to per-user transitions. */
  private updateAudience = 0;
  /** Counters for /metrics. */
  readonly stats = { countsPublished: 0, countsApplied: 0, badEvents: 0 };

  constructor(private readonly o: PresenceServiceOptions) {
    this.scheduler = o.scheduler ?? systemScheduler;
  }

  /** Subscribes to the tracker's reports and to other instances' transitions and counts. */
  start(): void {
    const { presence, broker } = this.o;
    // Warm the room list: published counts carry each room's Matrix ids (seed 003 §4.1).
    void this.roomList().catch(() => {});
    presence.onTransition((t, status) => {
      broker.publish(TRANSITION_SUBJECT, JSON.stringify({ user_id: t.userId, status, rooms: t.rooms }));
      this.applyTransition(t.userId, status, t.rooms);
    });
    presence.onMembership((m, kind) => this.announce(m, kind));
    presence.onRoomCounts((changed, origin) => {
      for (const [roomId, counts] of changed) {
        if (origin === "local") this.publishCounts(roomId, counts);
        else this.show(roomId, counts);
      }
    });
    this.unsubscribe.push(
      broker.subscribe(TRANSITION_SUBJECT, (_subject, payload) => {
        const t = parseTransition(payload);
        if (t) this.applyTransition(t.user_id, t.status, t.rooms);
        else this.bad("transition", payload);
      }),
      broker.subscribe(`${ROOM_PRESENCE_SUBJECT}.*`, (subject, payload) => this.onRoomPresence(subject, payload)),
      broker.onStatus((state) => state === "up" && void this.resync()),
    );
    if ((this.o.resyncMs ?? 30_000) > 0) this.resyncTimer = this.scheduler.every(this.o.resyncMs ?? 30_000, () => void this.resync());
  }

  close(): void {
    for (const u of this.unsubscribe.splice(0)) u();
    this.resyncTimer?.cancel();
    for (const t of this.throttles.values()) t.timer?.cancel();
    this.throttles.clear();
  }

  /** A local socket started (+1) or stopped (-1) listening for `presence.update`. */
  audienceChanged(delta: 1 | -1): void {
    this.updateAudience += delta;
  }

  /** Forgets the cached room list (after a room is created or changed here). */
  roomsChanged(): void {
    this.rooms = null;
    this.roomsGeneration++;
  }

  /**
   * The snapshot for a new presence socket (seed 003 §6.2): every room, with its numbers as of now.
   * The room list is read (or reused) first; the numbers are taken when the caller sends the frame.
   * @returns a function building the frame; call it and subscribe in the same tick
   */
  async prepareSnapshot(): Promise<() => string> {
    const { list } = await this.roomList();
    return () => {
      const view = this.o.presence.snapshot();
      const seen = new Set<string>();
      const rooms: RoomPresenceCounts[] = [];
      for (const r of list) {
        seen.add(r.id);
        rooms.push(toWire(r.id, view.get(r.id)));
      }
      for (const [id, c] of view) if (!seen.has(id) && (c.online > 0 || c.typing > 0)) rooms.push(toWire(id, c));
      return encodePresenceSnapshot(rooms, this.o.matrixPresence?.() ?? null);
    };
  }

  /** Reloads every room's numbers (each that differs goes to the presence sockets). */
  async resync(): Promise<void> {
    try {
      await this.o.presence.resync();
    } catch (err) {
      this.o.log.warn("presence: resync failed", { err });
    }
  }

  private async roomList() {
    const now = this.o.clock.now();
    if (!this.rooms || now - this.rooms.at > ROOM_LIST_TTL_MS) {
      const generation = this.roomsGeneration;
      const list = await this.o.store.listRoomMatrixMappings();
      const read = { list, byId: new Map(list.map((r) => [r.id, r])), at: now };
      // A list read before a room changed answers this caller only: the cache keeps no stale list
      // (the start-up warm-up could land after the default rooms were created, without them).
      if (generation !== this.roomsGeneration) return read;
      this.rooms = read;
    }
    return this.rooms;
  }

  private applyTransition(userId: string, status: PresenceStatus, rooms: string[]): void {
    const { hub, presence, streams } = this.o;
    if (this.updateAudience > 0 && this.updateAudience <= this.o.updatesMaxAudience) {
      hub.publishLocal(PRESENCE_USERS_TOPIC, encodePresenceUpdate(userId, status));
    }
    for (const roomId of rooms) {
      if (presence.roomUsersAtLeast(roomId) > this.o.membershipEventsMaxMembers) continue;
      streams.publishEventLocal(roomId, encodeRoomUserPresence(roomId, userId, status));
    }
  }

  /**
   * `room.join`/`room.leave` and the matching `room.presence`, unless the room is too large for
   * per-user events. A join counts the room as the flush that wrote it left it (the view is
   * updated before memberships are reported), not as it was after that one join: a connect storm
   * that takes a room from 0 to 1,000 users in one flush announces none of them, where counting
   * join by join announced the first 200 to every socket already in (two frames each, 40,000
   * frames per 100 sockets: 60% of the main thread's samples in a 10,000-socket storm). Nor fewer
   * than this instance's own sockets hold there by the time the flush answers
   * (`roomUsersAtLeast`): in a storm on a fresh server the first flushes wrote a few hundred holds
   * while thousands of sockets opened, and their joins went to all of those. A leave counts the
   * room as it was before it (the last users to leave a large room are announced).
   */
  private announce(m: Membership, kind: "join" | "leave"): void {
    const users = kind === "join" ? Math.max(m.holders, this.o.presence.roomUsersAtLeast(m.roomId)) : m.holders + 1;
    if (users > this.o.membershipEventsMaxMembers) return;
    const { streams } = this.o;
    streams.publishEvent(m.roomId, encodeRoomMembership(kind === "join" ? "room.join" : "room.leave", m.roomId, m.userId));
    streams.publishEvent(m.roomId, encodeRoomUserPresence(m.roomId, m.userId, kind === "join" ? "online" : "offline"));
  }

  /**
   * Activity in a room that changes no number (a Matrix read receipt, seed 003 §2.2): the room's
   * event goes out again (throttled like any other), with a fresh `last_event_ts`.
   */
  noteActivity(roomId: string): void {
    const counts = this.o.presence.snapshot().get(roomId);
    if (counts) this.publishCounts(roomId, counts);
  }

  /** This instance changed a room's numbers: tell the others and the presence sockets, throttled. */
  private publishCounts(roomId: string, counts: RoomCounts): void {
    let t = this.throttles.get(roomId);
    if (!t) this.throttles.set(roomId, (t = { sentAt: -Infinity, sentOnline: null, timer: null }));
    const now = this.o.clock.now();
    if (t.sentOnline !== counts.online || now - t.sentAt >= this.o.throttleMs) return this.sendCounts(roomId, t);
    t.timer ??= this.scheduler.after(t.sentAt + this.o.throttleMs - now, () => {
      t.timer = null;
      this.sendCounts(roomId, t);
    });
  }

  /** Publishes the room's latest numbers (the view's, which may be newer than what triggered it). */
  private sendCounts(roomId: string, t: Throttle): void {
    t.timer?.cancel();
    t.timer = null;
    const counts = this.o.presence.snapshot().get(roomId);
    if (!counts) return;
    t.sentAt = this.o.clock.now();
    t.sentOnline = counts.online;
    if (!this.rooms || this.o.clock.now() - this.rooms.at > ROOM_LIST_TTL_MS) void this.roomList().catch(() => {});
    const mapping = this.rooms?.byId.get(roomId);
    const matrixPresence = this.o.matrixPresence?.() ?? null;
    const derived = this.o.matrixRoomOf?.(roomId);
    const event: RoomPresenceEvent = {
      type: "room.presence", room_slug: slugOfRoom(roomId), matrix_room_id: mapping?.matrix_room_id ?? derived?.id ?? null,
      matrix_room_alias: mapping?.matrix_room_alias ?? derived?.alias ?? null, online_count: counts.online, typing_count: counts.typing,
      typing_users: counts.typingUsers, last_event_ts: t.sentAt, version: counts.version, connected_count: counts.holders,
      ...(matrixPresence ? { matrix_presence: matrixPresence } : {}),
    };
    this.o.broker.publish(`${ROOM_PRESENCE_SUBJECT}.${event.room_slug}`, JSON.stringify(event));
    this.stats.countsPublished++;
    this.show(roomId, counts);
    if (counts.holders === 0 && counts.typing === 0) this.throttles.delete(roomId);
  }

  /** Another instance's numbers: newest version wins. */
  private onRoomPresence(subject: string, payload: string): void {
    const slug = subject.slice(ROOM_PRESENCE_SUBJECT.length + 1);
    const e = parseRoomPresence(payload);
    if (!e || e.room_slug !== slug) return this.bad("room presence", payload);
    const roomId = roomIdForSlug(slug);
    const counts: RoomCounts = {
      online: e.online_count, typing: e.typing_count, typingUsers: e.typing_users, holders: e.connected_count, version: e.version,
    };
    if (this.o.presence.merge(roomId, counts)) {
      this.stats.countsApplied++;
      this.show(roomId, counts);
    }
  }

  /** Sends `room.presence` to this instance's presence sockets when what they show changed. */
  private show(roomId: string, counts: RoomCounts): void {
    const prev = this.shown.get(roomId);
    if (prev && prev.online === counts.online && prev.typing === counts.typing) return;
    if (counts.online === 0 && counts.typing === 0) this.shown.delete(roomId);
    else this.shown.set(roomId, { online: counts.online, typing: counts.typing });
    if (!prev && counts.online === 0 && counts.typing === 0) return;
    this.o.hub.publishLocal(PRESENCE_COUNTS_TOPIC, encodeRoomPresenceCounts(toWire(roomId, counts)));
  }

  private lastBadLog = 0;
  private bad(what: string, payload: string): void {
    this.stats.badEvents++;
    const now = this.o.clock.now();
    if (now - this.lastBadLog < 60_000) return;
    this.lastBadLog = now;
    this.o.log.warn(`presence: ignored a malformed ${what} event from the broker`, { payload: payload.slice(0, 200) });
  }
}

function toWire(roomId: string, c: { online: number; typing: number } | undefined): RoomPresenceCounts {
  return { room_slug: slugOfRoom(roomId), online_count: c?.online ?? 0, typing_count: c?.typing ?? 0 };
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

function parseTransition(payload: string): { user_id: string; status: PresenceStatus; rooms: string[] } | null {
  try {
    const t = JSON.parse(payload) as Record<string, unknown>;
    if (typeof t.user_id !== "string" || (t.status !== "online" && t.status !== "offline")) return null;
    const rooms = Array.isArray(t.rooms) ? t.rooms.filter((r): r is string => typeof r === "string") : [];
    return { user_id: t.user_id, status: t.status, rooms };
  } catch {
    return null;
  }
}

function parseRoomPresence(payload: string): RoomPresenceEvent | null {
  try {
    const e = JSON.parse(payload) as RoomPresenceEvent;
    if (e?.type !== "room.presence" || typeof e.room_slug !== "string") return null;
    if (!isCount(e.online_count) || !isCount(e.typing_count) || !isCount(e.version) || !isCount(e.connected_count)) return null;
    if (!Array.isArray(e.typing_users) || !e.typing_users.every((u) => typeof u === "string")) return null;
    return e;
  } catch {
    return null;
  }
}
