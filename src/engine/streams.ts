/**
 * RoomStreams: each room's publications, delivered to this instance's sockets in the room's seq
 * order, with nothing missed however they arrive (SPEC "Realtime guarantees"; centrifuge's
 * stream position and recovery are the model).
 *
 * - Interest: a room has a stream on this instance while a local socket is in it (plus a short
 *   linger). Only then does the instance subscribe to the room's broker subject
 *   `city.fanout.room.<room_id>`; rooms nobody here reads cost nothing here.
 * - Publications carry only what other instances need, serialised once: `<seq>\n<frame>` for a
 *   message, `\n<frame>` for an event without a seq (join, leave, typing, presence).
 * - Order: a stream delivers seq n only after n − 1. A publication that arrives early (from the
 *   broker, or a local commit overtaking another instance's) waits; a gap that the broker does not
 *   fill within `gapGraceMs` is read from the store, which has every seq below any committed one.
 * - Positioning: a lost *last* message shows no gap, so every `positionIntervalMs`, and at once
 *   when the broker link comes back after an outage, each stream compares the seq it delivered with
 *   the store's (one query for all rooms) and fills what it missed. A broker outage delays live
 *   delivery; it loses none of it.
 * - Recovery: a socket that reconnects with `since` gets the messages after it from the store, then
 *   whatever the stream delivered meanwhile, then live ones: no gap, no duplicate.
 */
import type { ServerWebSocket } from "bun";
import { systemScheduler, type Scheduler, type Timer } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { Broker } from "./broker/broker.ts";
import { CLOSE } from "./errors.ts";
import type { Hub } from "./hub.ts";
import { roomTopic } from "./protocol.ts";

/** Broker subject prefix of room publications between instances. */
export const ROOM_SUBJECT_PREFIX = "city.fanout.room.";

/** A message publication as the store can rebuild it: its seq and its pre-serialised frame. */
export interface SequencedFrame {
  seq: number;
  frame: string;
}

/** Where streams read what the broker did not bring: the store, seen as frames. */
export interface RoomHistory {
  /** Last seq of each room asked for (rooms without messages: 0; unknown rooms left out). */
  lastSeqs(roomIds: string[]): Promise<Map<string, number>>;
  /**
   * Messages of a room with `afterSeq < seq < beforeSeq`, in seq order: the oldest `limit` with
   * `oldest`, else the newest `limit`.
   */
  read(roomId: string, q: { afterSeq: number; beforeSeq?: number; limit: number; oldest?: boolean }): Promise<SequencedFrame[]>;
}

export interface RoomStreamsOptions {
  broker: Broker;
  hub: Hub;
  history: RoomHistory;
  log: Logger;
  scheduler?: Scheduler;
  /** How long a gap may wait for the broker before it is read from the store, ms. */
  gapGraceMs?: number;
  /** How often every stream checks its position against the store, ms (SPEC: at most 30 s). */
  positionIntervalMs?: number;
  /** How long a stream outlives its last local socket (a reload comes straight back), ms. */
  lingerMs?: number;
  /** Messages read from the store per gap-filling round trip. */
  fillPageSize?: number;
  /** Most publications held for one recovering socket before it is closed as a slow consumer. */
  maxRecoveryBuffer?: number;
  /** Most early publications a stream holds; beyond it they are dropped and read from the store. */
  maxPending?: number;
}

interface Recovering {
  ws: ServerWebSocket<unknown>;
  /** Publications delivered while the store was read; seq 0 = an event without seq. */
  buffer: SequencedFrame[];
  overflow: boolean;
}

interface Stream {
  readonly roomId: string;
  readonly topic: string;
  /** Local sockets in the room (subscribed or recovering). */
  interest: number;
  unsubscribe: (() => void) | null;
  linger: Timer | null;
  /** Next seq to deliver; 0 until the stream knows where the room stands. */
  next: number;
  /** Resolves once positioned; rejects if the first positioning failed (it is retried). */
  positioned: Promise<void>;
  /** Early publications by seq. */
  pending: Map<number, string>;
  /** Highest seq known to exist (seen from the broker, or read in a position check). */
  target: number;
  gapTimer: Timer | null;
  filling: boolean;
  /** Consecutive failed store reads, for the retry backoff. */
  failures: number;
  recovering: Set<Recovering>;
  closed: boolean;
}

/** Result of {@link RoomStreams.joinWithRecovery}. */
export interface RecoveryResult {
  /** Messages sent from the store. */
  replayed: number;
  /** More than `max` messages were missed: only the newest `max` were sent. */
  truncated: boolean;
}

export class RoomStreams {
  private readonly streams = new Map<string, Stream>();
  private readonly scheduler: Scheduler;
  private positionTimer: Timer | null = null;
  private unsubscribeStatus: (() => void) | null = null;
  private positioning: Promise<void> | null = null;
  /** Counters for /metrics and tests. */
  readonly stats = { gapFills: 0, filledFromStore: 0, duplicatesDropped: 0, positionChecks: 0, storeReadFailures: 0 };

  constructor(private readonly o: RoomStreamsOptions) {
    this.scheduler = o.scheduler ?? systemScheduler;
  }

  /** Starts the periodic position check and watches the broker link (a return triggers a check). */
  start(): void {
    this.positionTimer = this.scheduler.every(this.o.positionIntervalMs ?? 10_000, () => void this.checkPositions());
    this.unsubscribeStatus = this.o.broker.onStatus((state) => {
      if (state === "up") void this.checkPositions();
    });
  }

  /** Ends every stream and its broker subscription. */
  close(): void {
    this.positionTimer?.cancel();
    this.positionTimer = null;
    this.unsubscribeStatus?.();
    for (const s of this.streams.values()) this.destroy(s);
  }

  /** Rooms with a stream on this instance. */
  roomCount(): number {
    return this.streams.size;
  }

  /** Local sockets in `roomId` (joined or recovering). */
  interest(roomId: string): number {
    return this.streams.get(roomId)?.interest ?? 0;
  }

  /** The last seq delivered to `roomId`'s local sockets (0 before the stream is positioned or without one). */
  delivered(roomId: string): number {
    const s = this.streams.get(roomId);
    return s && s.next > 0 ? s.next - 1 : 0;
  }

  /**
   * Publishes a committed message: once to the other instances, and into the local stream (which
   * delivers it in seq order) when a local socket is in the room.
   * @param frame the `room.message` frame, serialised once
   */
  publishMessage(roomId: string, seq: number, frame: string): void {
    this.o.broker.publish(ROOM_SUBJECT_PREFIX + roomId, `${seq}\n${frame}`);
    const s = this.streams.get(roomId);
    if (s) this.offer(s, seq, frame);
  }

  /** Publishes an event without a seq (join, leave, typing, per-user presence) to the room everywhere. */
  publishEvent(roomId: string, frame: string): void {
    this.o.broker.publish(ROOM_SUBJECT_PREFIX + roomId, `\n${frame}`);
    const s = this.streams.get(roomId);
    if (s) this.deliverEvent(s, frame);
  }

  /** Publishes an event without a seq to this instance's sockets in the room only. */
  publishEventLocal(roomId: string, frame: string): void {
    const s = this.streams.get(roomId);
    if (s) this.deliverEvent(s, frame);
  }

  /** Puts `ws` in the room, live from now. */
  join(ws: ServerWebSocket<unknown>, roomId: string): void {
    const s = this.acquire(roomId);
    ws.subscribe(s.topic);
  }

  /**
   * Puts `ws` in the room after sending it the messages after seq `since` (the newest `max` of
   * them), in order, then what the stream delivered while the store was read.
   * @returns what was replayed, or `null` when the socket closed meanwhile (or overflowed its
   *   buffer and was closed with 4008)
   * @throws whatever the store throws; the socket is then not in the room
   */
  async joinWithRecovery(ws: ServerWebSocket<unknown>, roomId: string, since: number, max: number): Promise<RecoveryResult | null> {
    const s = this.acquire(roomId);
    const entry: Recovering = { ws, buffer: [], overflow: false };
    s.recovering.add(entry);
    let rows: SequencedFrame[];
    try {
      await s.positioned;
      rows = await this.o.history.read(roomId, { afterSeq: since, limit: max + 1 });
    } catch (err) {
      s.recovering.delete(entry);
      this.release(roomId);
      throw err;
    }
    const truncated = rows.length > max;
    const replay = truncated ? rows.slice(rows.length - max) : rows;
    // Up to what the stream has delivered: later ones reach the socket through the buffer, or live.
    const delivered = s.next - 1;
    let last = since;
    let replayed = 0;
    const { hub } = this.o;
    // Paced by the socket's buffer (a large replay must not make it a slow consumer); the entry
    // stays registered meanwhile, so whatever the stream delivers goes into its buffer.
    for (const row of replay) {
      if (row.seq > delivered) break;
      await hub.writable(ws);
      if (!hub.isOpen(ws) || entry.overflow) break;
      ws.send(row.frame);
      last = row.seq;
      replayed++;
    }
    for (let i = 0; i < entry.buffer.length && hub.isOpen(ws) && !entry.overflow; i++) {
      const p = entry.buffer[i]!;
      if (p.seq !== 0 && p.seq <= last) continue;
      await hub.writable(ws);
      ws.send(p.frame);
      if (p.seq !== 0) last = p.seq;
    }
    s.recovering.delete(entry);
    if (!hub.isOpen(ws)) {
      this.release(roomId);
      return null;
    }
    if (entry.overflow) {
      ws.close(CLOSE.slowConsumer, "too many messages during recovery; reconnect with since");
      this.release(roomId);
      return null;
    }
    // Same tick as the last send: nothing delivered in between.
    ws.subscribe(s.topic);
    return { replayed, truncated };
  }

  /** Takes `ws` out of the room (`closed`: Bun already unsubscribed it). */
  leave(ws: ServerWebSocket<unknown>, roomId: string, closed: boolean): void {
    if (!closed) ws.unsubscribe(roomTopic(roomId));
    this.release(roomId);
  }

  /**
   * Compares every stream's position with the store (one query) and fills what is missing. Runs
   * on a timer and when the broker link returns; concurrent calls share one check.
   */
  checkPositions(): Promise<void> {
    if (this.positioning) return this.positioning;
    const streams = [...this.streams.values()].filter((s) => s.next > 0);
    if (streams.length === 0) return Promise.resolve();
    this.stats.positionChecks++;
    this.positioning = (async () => {
      try {
        const last = await this.o.history.lastSeqs(streams.map((s) => s.roomId));
        for (const s of streams) {
          const seq = last.get(s.roomId);
          if (s.closed || seq === undefined || seq < s.next) continue;
          s.target = Math.max(s.target, seq);
          this.scheduleFill(s, this.o.gapGraceMs ?? 20);
        }
      } catch (err) {
        this.stats.storeReadFailures++;
        this.o.log.warn("streams: position check failed", { err });
      } finally {
        this.positioning = null;
      }
    })();
    return this.positioning;
  }

  // ---- streams ---------------------------------------------------------------------------

  private acquire(roomId: string): Stream {
    let s = this.streams.get(roomId);
    if (!s) {
      s = this.create(roomId);
      this.streams.set(roomId, s);
    }
    s.linger?.cancel();
    s.linger = null;
    s.interest++;
    return s;
  }

  private release(roomId: string): void {
    const s = this.streams.get(roomId);
    if (!s || s.interest === 0) return;
    s.interest--;
    if (s.interest > 0) return;
    const linger = this.o.lingerMs ?? 5000;
    if (linger <= 0) this.destroy(s);
    else s.linger = this.scheduler.after(linger, () => s.interest === 0 && this.destroy(s));
  }

  private create(roomId: string): Stream {
    const s: Stream = {
      roomId, topic: roomTopic(roomId), interest: 0, unsubscribe: null, linger: null, next: 0, positioned: Promise.resolve(),
      pending: new Map(), target: 0, gapTimer: null, filling: false, failures: 0, recovering: new Set(), closed: false,
    };
    // Subscribe before reading the position: whatever commits after the read arrives by the broker.
    s.unsubscribe = this.o.broker.subscribe(ROOM_SUBJECT_PREFIX + roomId, (_subject, payload) => this.onBroker(s, payload));
    s.positioned = this.position(s);
    s.positioned.catch(() => {});
    return s;
  }

  private destroy(s: Stream): void {
    if (s.closed) return;
    s.closed = true;
    s.unsubscribe?.();
    s.linger?.cancel();
    s.gapTimer?.cancel();
    s.pending.clear();
    if (this.streams.get(s.roomId) === s) this.streams.delete(s.roomId);
  }

  /**
   * Finds where the room stands (its last committed seq). If the store does not answer, the
   * returned promise rejects (a recovering socket learns it now) and the stream keeps retrying
   * with backoff in the background; publications wait in `pending` meanwhile.
   */
  private async position(s: Stream, firstAttempt = 0): Promise<void> {
    for (let attempt = firstAttempt; !s.closed && s.next === 0; attempt++) {
      if (attempt > 0) await new Promise<void>((r) => this.scheduler.after(backoff(attempt), r));
      try {
        const last = (await this.o.history.lastSeqs([s.roomId])).get(s.roomId) ?? 0;
        if (s.closed || s.next !== 0) return;
        // What arrived since the subscription was published after the stream began, so the
        // sockets that joined get it, even what the read already counts (a socket's own first
        // message, committed while the read was on its way): start at the lowest of it, and let
        // the filler read from the store whatever the broker did not bring up to `last`.
        let first = last + 1;
        for (const seq of s.pending.keys()) if (seq < first) first = seq;
        s.next = first;
        if (last > s.target) s.target = last;
        this.drain(s);
        return;
      } catch (err) {
        this.stats.storeReadFailures++;
        if (attempt === 0) {
          this.o.log.warn("streams: cannot read the room's position; retrying", { room_id: s.roomId, err });
          const retry = this.position(s, 1);
          retry.catch(() => {});
          s.positioned = retry;
          throw err;
        }
      }
    }
  }

  private onBroker(s: Stream, payload: string): void {
    const nl = payload.indexOf("\n");
    if (nl < 0) return;
    if (nl === 0) {
      this.deliverEvent(s, payload.slice(1));
      return;
    }
    const seq = Number(payload.slice(0, nl));
    if (!Number.isSafeInteger(seq) || seq < 1) return;
    this.offer(s, seq, payload.slice(nl + 1));
  }

  private offer(s: Stream, seq: number, frame: string): void {
    if (s.closed) return;
    if (s.next > 0 && seq < s.next) {
      this.stats.duplicatesDropped++;
      return;
    }
    if (seq > s.target) s.target = seq;
    if (s.next > 0 && seq === s.next && s.pending.size === 0) {
      // The common case: in order, nothing waiting.
      this.deliver(s, seq, frame);
      s.next++;
      if (s.target >= s.next) this.scheduleFill(s, this.o.gapGraceMs ?? 20);
      return;
    }
    if (s.pending.size >= (this.o.maxPending ?? 10_000)) {
      // Everything pending is committed: drop it and let the filler read it back in order.
      s.pending.clear();
    } else {
      s.pending.set(seq, frame);
    }
    this.drain(s);
  }

  /** Delivers whatever is next in line; schedules a fill while a gap remains. */
  private drain(s: Stream): void {
    if (s.next === 0 || s.closed) return;
    let frame: string | undefined;
    while ((frame = s.pending.get(s.next)) !== undefined) {
      s.pending.delete(s.next);
      this.deliver(s, s.next, frame);
      s.next++;
    }
    if (s.pending.size > 0 || s.target >= s.next) this.scheduleFill(s, this.o.gapGraceMs ?? 20);
    else {
      s.gapTimer?.cancel();
      s.gapTimer = null;
    }
  }

  private scheduleFill(s: Stream, delayMs: number): void {
    if (s.gapTimer || s.filling || s.closed) return;
    s.gapTimer = this.scheduler.after(delayMs, () => {
      s.gapTimer = null;
      void this.fill(s);
    });
  }

  /** Reads the gap from the store and delivers it, a page per round trip. */
  private async fill(s: Stream): Promise<void> {
    if (s.closed || s.filling || s.next === 0) return;
    const lowestPending = s.pending.size ? Math.min(...s.pending.keys()) : Infinity;
    const upTo = Math.min(lowestPending - 1, s.target);
    if (upTo < s.next) return this.drain(s);
    s.filling = true;
    this.stats.gapFills++;
    let pageFull = false;
    try {
      const page = this.o.fillPageSize ?? 500;
      const rows = await this.o.history.read(s.roomId, { afterSeq: s.next - 1, beforeSeq: upTo + 1, limit: page, oldest: true });
      s.failures = 0;
      pageFull = rows.length === page;
      for (const row of rows) {
        if (s.closed) return;
        if (row.seq < s.next) continue;
        if (row.seq > s.next) break; // cannot happen with a store that numbers without gaps
        s.pending.delete(row.seq);
        this.deliver(s, row.seq, row.frame);
        s.next++;
        this.stats.filledFromStore++;
      }
    } catch (err) {
      this.stats.storeReadFailures++;
      s.failures++;
      if (s.failures === 1) this.o.log.warn("streams: cannot read a gap from the store; retrying", { room_id: s.roomId, err });
    } finally {
      s.filling = false;
    }
    if (s.closed) return;
    if (s.failures > 0) return this.scheduleFill(s, backoff(s.failures));
    let frame: string | undefined;
    while ((frame = s.pending.get(s.next)) !== undefined) {
      s.pending.delete(s.next);
      this.deliver(s, s.next, frame);
      s.next++;
    }
    if (s.pending.size > 0 || s.target >= s.next) this.scheduleFill(s, pageFull ? 0 : (this.o.gapGraceMs ?? 20));
  }

  private deliver(s: Stream, seq: number, frame: string): void {
    this.o.hub.publishLocal(s.topic, frame);
    for (const r of s.recovering) this.bufferFor(r, seq, frame);
  }

  private deliverEvent(s: Stream, frame: string): void {
    this.o.hub.publishLocal(s.topic, frame);
    for (const r of s.recovering) this.bufferFor(r, 0, frame);
  }

  private bufferFor(r: Recovering, seq: number, frame: string): void {
    if (r.overflow) return;
    if (r.buffer.length >= (this.o.maxRecoveryBuffer ?? 10_000)) {
      r.overflow = true;
      r.buffer = [];
      return;
    }
    r.buffer.push({ seq, frame });
  }
}

/** Retry delay after `attempt` failures: 100 ms doubling to 5 s. */
function backoff(attempt: number): number {
  return Math.min(5000, 100 * 2 ** Math.max(0, attempt - 1));
}
