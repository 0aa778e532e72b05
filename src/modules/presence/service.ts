/**
 * PresenceService: turns what the presence engine observes into frames (seed 000 §5, seed 003 §6).
 *
 * - Transitions: the one instance that detects a user's online/offline transition publishes it on
 *   the broker subject `city.presence.transition`; every instance (itself included) then sends
 *   `presence.update` to its presence sockets and `room.presence` to the rooms where it holds a
 *   socket of that user. `presence.update` goes to every listening socket, so a reconnect storm
 *   of n users costs n² deliveries: it is sent only while at most PRESENCE_UPDATES_MAX_AUDIENCE
 *   local sockets listen (sockets opened with `?events=counts` do not).
 * - Room counts: every instance computes the same counts from the same backend each sweep and
 *   sends `{type:"room.presence", …}` to its presence sockets, at once when a room's online count
 *   changed, otherwise at most once per ROOM_PRESENCE_THROTTLE_MS per room (seed 003 §5.3).
 */
import type { Clock } from "../../clock.ts";
import type { Broker } from "../../engine/broker/broker.ts";
import type { Hub } from "../../engine/hub.ts";
import type { PresenceManager, PresenceStatus, RoomCounts } from "../../engine/presence/presence.ts";
import {
  encodePresenceSnapshot, encodePresenceUpdate, encodeRoomPresenceCounts, encodeRoomUserPresence, PRESENCE_COUNTS_TOPIC, PRESENCE_USERS_TOPIC,
  roomTopic, slugOfRoom, type RoomPresenceCounts,
} from "../../engine/protocol.ts";
import type { Logger } from "../../log.ts";
import type { Store } from "../../storage/store.ts";

/** Broker subject carrying `{user_id, status}` for each transition, once, from its detector. */
export const TRANSITION_SUBJECT = "city.presence.transition";
/** How long the room list for snapshots is reused, ms. */
const ROOM_LIST_TTL_MS = 10_000;

export interface PresenceServiceOptions {
  presence: PresenceManager;
  hub: Hub;
  broker: Broker;
  store: Store;
  clock: Clock;
  log: Logger;
  throttleMs: number;
  /** Per-user room events only while this instance holds at most this many users in the room. */
  membershipEventsMaxMembers: number;
  /** `presence.update` only while at most this many local sockets listen for it. */
  updatesMaxAudience: number;
}

interface Throttle {
  sentAt: number;
  sent: RoomCounts | null;
  pending: RoomCounts | null;
  timer: ReturnType<typeof setTimeout> | null;
}

export class PresenceService {
  private readonly throttles = new Map<string, Throttle>();
  private rooms: { ids: string[]; at: number } | null = null;
  private unsubscribe: (() => void) | null = null;
  /** Local presence sockets subscribed to per-user transitions. */
  private updateAudience = 0;

  constructor(private readonly o: PresenceServiceOptions) {}

  /** Subscribes to the engine's transitions and counts and to other instances' transitions. */
  start(): void {
    const { presence, broker, log } = this.o;
    presence.onTransition((userId, status) => {
      broker.publish(TRANSITION_SUBJECT, JSON.stringify({ user_id: userId, status }));
      this.applyTransition(userId, status);
    });
    this.unsubscribe = broker.subscribe(TRANSITION_SUBJECT, (_subject, payload) => {
      try {
        const t = JSON.parse(payload) as { user_id: string; status: PresenceStatus };
        if (typeof t.user_id === "string" && (t.status === "online" || t.status === "offline")) this.applyTransition(t.user_id, t.status);
      } catch (err) {
        log.warn("presence: bad transition from the broker", { err });
      }
    });
    presence.onRoomCounts((changed) => {
      for (const [roomId, counts] of changed) this.countsChanged(roomId, counts);
    });
  }

  close(): void {
    this.unsubscribe?.();
    for (const t of this.throttles.values()) if (t.timer) clearTimeout(t.timer);
    this.throttles.clear();
  }

  /** A local socket started (+1) or stopped (-1) listening for `presence.update`. */
  audienceChanged(delta: 1 | -1): void {
    this.updateAudience += delta;
  }

  /** Forgets the cached room list (after a room is created here). */
  roomsChanged(): void {
    this.rooms = null;
  }

  /**
   * The snapshot for a new presence socket (seed 003 §6.2): every room, with its counts as of now.
   * The room list is read (or reused) first; the counts are taken when the caller sends the frame.
   * @returns a function building the frame; call it and subscribe in the same tick
   */
  async prepareSnapshot(): Promise<() => string> {
    const now = this.o.clock.now();
    if (!this.rooms || now - this.rooms.at > ROOM_LIST_TTL_MS) {
      const ids = (await this.o.store.listRoomMatrixMappings()).map((r) => r.id);
      this.rooms = { ids, at: now };
    }
    const ids = this.rooms.ids;
    return () => {
      const counts = this.o.presence.snapshot();
      const seen = new Set(ids);
      const rooms: RoomPresenceCounts[] = ids.map((id) => toWire(id, counts.get(id)));
      for (const [id, c] of counts) if (!seen.has(id)) rooms.push(toWire(id, c));
      return encodePresenceSnapshot(rooms);
    };
  }

  private applyTransition(userId: string, status: PresenceStatus): void {
    const { hub, presence } = this.o;
    if (this.updateAudience > 0 && this.updateAudience <= this.o.updatesMaxAudience) {
      hub.publishLocal(PRESENCE_USERS_TOPIC, { cursor: null, frame: encodePresenceUpdate(userId, status) });
    }
    for (const roomId of presence.roomsHeldLocally(userId)) {
      if (presence.localUserCount(roomId) > this.o.membershipEventsMaxMembers) continue;
      hub.publish(roomTopic(roomId), { cursor: null, frame: encodeRoomUserPresence(roomId, userId, status) });
    }
  }

  private countsChanged(roomId: string, counts: RoomCounts): void {
    let t = this.throttles.get(roomId);
    if (!t) this.throttles.set(roomId, (t = { sentAt: -Infinity, sent: null, pending: null, timer: null }));
    const now = this.o.clock.now();
    const onlineChanged = (t.sent?.online ?? 0) !== counts.online;
    if (onlineChanged || now - t.sentAt >= this.o.throttleMs) {
      this.send(roomId, t, counts, now);
      return;
    }
    t.pending = counts;
    t.timer ??= setTimeout(() => {
      const th = this.throttles.get(roomId);
      if (!th) return;
      th.timer = null;
      if (th.pending) this.send(roomId, th, th.pending, this.o.clock.now());
    }, t.sentAt + this.o.throttleMs - now);
  }

  private send(roomId: string, t: Throttle, counts: RoomCounts, now: number): void {
    if (t.timer) clearTimeout(t.timer);
    t.timer = null;
    t.pending = null;
    t.sent = counts;
    t.sentAt = now;
    this.o.hub.publishLocal(PRESENCE_COUNTS_TOPIC, { cursor: null, frame: encodeRoomPresenceCounts(toWire(roomId, counts)) });
    if (counts.online === 0 && counts.typing === 0) this.throttles.delete(roomId);
  }
}

function toWire(roomId: string, c: RoomCounts | undefined): RoomPresenceCounts {
  return { room_slug: slugOfRoom(roomId), online_count: c?.online ?? 0, typing_count: c?.typing ?? 0 };
}
