/**
 * LivingMapService (seeds 002 and 004): one live picture of the network.
 *
 * - The scene (`scene.ts`) is fed by the six upstreams (`upstreams.ts`; the city layer comes from
 *   this process: rooms, online users, messages of the last hour) and by every event on the eight
 *   NATS subjects (`events.ts`).
 * - Events, with JetStream (NATS `-js`): a stream over the eight subjects and a **durable
 *   consumer** shared by every instance, whose batches are written to `living_map_history` and
 *   only then acknowledged (nothing is lost across a restart: what was not acknowledged comes
 *   back); each instance also reads the stream in order (an ordered consumer) to move its scene
 *   and its sockets. Without JetStream: core NATS subscriptions (or, with no NATS at all, the
 *   in-process bus, which carries the city's own events), and this instance writes what it
 *   receives to the log in batches.
 * - The stream socket gets `{kind:"snapshot", …}` then `{kind:"event", id, event_type, timestamp,
 *   payload}` per event, each serialised once and published on one Bun topic; a reconnecting
 *   client passes `since` (an event id) and first gets what it missed, from the log and from the
 *   recent events this instance keeps, without duplicates.
 * - Periodic snapshots of the scene warm the next start; the log keeps LIVING_MAP_RETENTION_DAYS.
 */
import type { ServerWebSocket } from "bun";
import { systemScheduler, type Clock, type Scheduler, type Timer } from "../../clock.ts";
import type { Broker, EventStream, StreamEvent } from "../../engine/broker/broker.ts";
import { AppError } from "../../engine/errors.ts";
import type { Hub } from "../../engine/hub.ts";
import type { PresenceTracker } from "../../engine/presence/presence.ts";
import type { Logger } from "../../log.ts";
import type { LivingMapEvent, LivingMapEventWrite, Store } from "../../storage/store.ts";
import { isDataError } from "../../storage/data-errors.ts";
import { encodeStreamEvent, familyOf, LIVING_MAP_SUBJECTS, readEvent, type BadEvent, type ReadEvent } from "./events.ts";
import { Scene, type EntityItem } from "./scene.ts";
import { Upstreams, type UpstreamUrls } from "./upstreams.ts";

/** Bun topic of the stream sockets. */
export const LIVING_MAP_TOPIC = "living-map";

export interface LivingMapOptions {
  store: Store;
  broker: Broker;
  hub: Hub;
  presence: PresenceTracker;
  log: Logger;
  clock: Clock;
  scheduler?: Scheduler;
  version: string;
  urls: UpstreamUrls;
  refreshMs: number;
  upstreamTimeoutMs: number;
  breakerOpenMs: number;
  retentionDays: number;
  /** 0: no periodic snapshots. */
  snapshotIntervalMs: number;
  /** JetStream stream and durable consumer names; `jetstream: false` keeps to core subscriptions. */
  jetstream: boolean;
  streamName: string;
  consumerName: string;
  ackWaitMs: number;
  maxEventBytes: number;
  /** Most events a reconnecting stream socket is sent. */
  recoveryMax: number;
}

/** One applied event, kept for replay to reconnecting sockets. */
interface Recent {
  id: string;
  frame: string;
}

interface Recovering {
  ws: ServerWebSocket<unknown>;
  buffer: Recent[];
}

/** Most stream messages a JetStream batch carries. */
const JS_BATCH = 2000;
/** Stream messages read by the ordered reader, kept for the durable one (which then parses nothing). */
const READ_CACHE_MAX = 20_000;
/** Recent events kept for replay, however the log is doing. */
const RECENT_MAX = 10_000;
/** Non-JetStream log writes: at most this many per batch, and a batch at least this often, ms. */
const WRITE_BATCH = 500;
const WRITE_EVERY_MS = 25;
/** Events waiting for the log beyond this are dropped (and counted): the store is far behind. */
const WRITE_QUEUE_MAX = 100_000;

export class LivingMapService {
  readonly scene: Scene;
  private readonly upstreams: Upstreams;
  private readonly scheduler: Scheduler;
  private readonly timers: Timer[] = [];
  private readonly stops: (() => void)[] = [];
  private recent: Recent[] = [];
  private readonly recentIds = new Map<string, number>();
  private recentBase = 0;
  private readonly recovering = new Set<Recovering>();
  private writeQueue: LivingMapEventWrite[] = [];
  private readonly readCache = new Map<number, ReadEvent>();
  private writing: Promise<void> | null = null;
  private mode: "jetstream" | "nats" | "local" = "local";
  private readonly badLogged = new Map<string, number>();
  private cityRefreshing = false;
  /** A city refresh was asked for while one ran (it may have read before what prompted it): run again after. */
  private cityRefreshAgain = false;
  /** For /metrics. */
  readonly stats = {
    received: 0, applied: 0, stored: 0, dropped: 0, storeFailures: 0, bad: new Map<string, number>(), snapshotsSaved: 0, pruned: 0,
  };

  constructor(private readonly o: LivingMapOptions) {
    this.scheduler = o.scheduler ?? systemScheduler;
    this.scene = new Scene(() => o.clock.now());
    this.upstreams = new Upstreams({
      urls: o.urls, scene: this.scene, timeoutMs: o.upstreamTimeoutMs, breakerOpenMs: o.breakerOpenMs, staleAfterMs: o.refreshMs * 3, now: () => o.clock.now(),
    });
    this.scene.setSourceStatus({ name: "city-service", status: "unavailable", fetched_at: null, error: "not read yet" });
  }

  /** How events arrive: through the JetStream durable consumer, core NATS, or this process only. */
  get intake(): "jetstream" | "nats" | "local" {
    return this.mode;
  }

  /** Upstream attempts by source, for /metrics. */
  get upstreamStats() {
    return this.upstreams.stats;
  }

  /**
   * Warms the scene from the last snapshot and the log after it, starts the event intake, the
   * upstream and city refreshes, snapshots and retention.
   */
  async start(): Promise<void> {
    const { o } = this;
    await this.warm();
    const js = o.jetstream && o.broker.jetstream ? await o.broker.jetstream().catch(() => null) : null;
    if (js) await this.startJetStream(js);
    else this.startSubscriptions();
    void this.refreshCity();
    void this.upstreams.refresh();
    this.timers.push(
      this.scheduler.every(o.refreshMs, () => {
        void this.upstreams.refresh();
        void this.refreshCity();
      }),
      this.scheduler.every(60 * 60_000, () => void this.prune()),
    );
    if (o.snapshotIntervalMs > 0) this.timers.push(this.scheduler.every(o.snapshotIntervalMs, () => void this.saveSnapshot().catch(() => {})));
  }

  /** Stops reading, writes what is queued and a last snapshot. */
  async close(): Promise<void> {
    for (const t of this.timers) t.cancel();
    for (const s of this.stops.splice(0)) s();
    await this.flushHistory();
    if (this.o.snapshotIntervalMs > 0) await this.saveSnapshot().catch(() => {});
  }

  // ---- reading ---------------------------------------------------------------------------

  /** `GET /living-map/health` (seed 004 §4.1). */
  health() {
    return { status: "ok" as const, service: "living-map-service", version: this.o.version, time: new Date(this.o.clock.now()).toISOString() };
  }

  /** The snapshot as JSON text (serialised once per change of the scene). */
  snapshotJson(): string {
    this.upstreams.markAges();
    return this.scene.snapshotJson();
  }

  /** `GET /living-map/entities` (seed 004 §4.3). */
  entities(type: EntityItem["type"] | undefined, limit: number): { items: EntityItem[] } {
    return { items: this.scene.entities(type).slice(0, limit) };
  }

  /** `GET /living-map/entities/{id}`. @throws AppError `entity_not_found` */
  entity(id: string) {
    const e = this.scene.entity(id);
    if (!e) throw new AppError("entity_not_found", `no entity ${id} on the map`);
    return e;
  }

  /**
   * `GET /living-map/history` (seed 004 §4.5), newest first: `since` (ISO) keeps events at or after
   * it, `before` (an event id) pages back.
   * @throws AppError `invalid_cursor` (an unknown `before`), `validation_failed` (a bad `since`)
   */
  async history(q: { since?: string; before?: string; limit: number }): Promise<{ items: Omit<LivingMapEvent, "seq" | "stream_seq">[] }> {
    let since: string | undefined;
    if (q.since !== undefined) {
      const t = Date.parse(q.since);
      if (!/^\d{4}-\d\d-\d\dT/.test(q.since) || Number.isNaN(t)) throw new AppError("validation_failed", "since must be an ISO date-time, e.g. 2025-11-24T00:00:00Z");
      since = new Date(t).toISOString();
    }
    let beforeSeq: number | undefined;
    if (q.before !== undefined) {
      const seq = await this.o.store.livingMapEventSeq(q.before);
      if (seq === null) throw new AppError("invalid_cursor", `before: the history has no event ${q.before}`);
      beforeSeq = seq;
    }
    const rows = await this.o.store.listLivingMapHistory({ since, beforeSeq, limit: q.limit });
    return { items: rows.map(({ seq: _s, stream_seq: _ss, ...rest }) => rest) };
  }

  /** The first frame of a stream socket: `{kind:"snapshot", …the snapshot}`. */
  snapshotFrame(): string {
    return `{"kind":"snapshot",${this.snapshotJson().slice(1)}`;
  }

  /** Whether `id` is an event this map knows (recently, or in the log). */
  async knows(id: string): Promise<boolean> {
    return this.recentIds.has(id) || (await this.o.store.livingMapEventSeq(id)) !== null;
  }

  /**
   * Puts `ws` on the stream. Without `since`: the snapshot, then live events (same tick: nothing
   * in between). With `since` (the last event id the client saw): the events it missed, oldest
   * first, from the log and the recent ones this instance keeps, without duplicates, then live;
   * when more than `recoveryMax` were missed, a fresh snapshot instead.
   * @returns how many events were replayed (-1: a snapshot was sent), or `null` when the socket closed meanwhile
   * @throws AppError `invalid_cursor` for an event id this map does not know; `store_unavailable`
   */
  async join(ws: ServerWebSocket<unknown>, since: string | null): Promise<number | null> {
    if (since === null) {
      ws.send(this.snapshotFrame());
      ws.subscribe(LIVING_MAP_TOPIC);
      return -1;
    }
    const entry: Recovering = { ws, buffer: [] };
    this.recovering.add(entry);
    try {
      const { events, truncated } = await this.missedSince(since);
      const { hub } = this.o;
      if (!hub.isOpen(ws)) return null;
      if (truncated) {
        ws.send(this.snapshotFrame());
        ws.subscribe(LIVING_MAP_TOPIC);
        return -1;
      }
      const sent = new Set<string>();
      for (const r of events) {
        await hub.writable(ws);
        ws.send(r.frame);
        sent.add(r.id);
      }
      for (let i = 0; i < entry.buffer.length && hub.isOpen(ws); i++) {
        const r = entry.buffer[i]!;
        if (sent.has(r.id)) continue;
        await hub.writable(ws);
        ws.send(r.frame);
      }
      if (!hub.isOpen(ws)) return null;
      ws.subscribe(LIVING_MAP_TOPIC);
      return events.length;
    } finally {
      this.recovering.delete(entry);
    }
  }

  // ---- intake ----------------------------------------------------------------------------

  private async startJetStream(js: EventStream): Promise<void> {
    const { o } = this;
    const { ackFloor } = await js.ensure({
      stream: o.streamName, subjects: [...LIVING_MAP_SUBJECTS], maxAgeMs: o.retentionDays * 86_400_000, consumer: o.consumerName, ackWaitMs: o.ackWaitMs,
    });
    this.mode = "jetstream";
    // The log: batches acknowledged only once written (shared by every instance). A message this
    // instance's ordered reader has read already is not parsed again.
    this.stops.push(
      js.durable({ stream: o.streamName, consumer: o.consumerName, batch: JS_BATCH }, async (batch) => {
        const events: LivingMapEventWrite[] = [];
        for (const m of batch) {
          const r = this.readCache.get(m.seq) ?? this.readStream(m, false);
          this.readCache.delete(m.seq);
          if (r.ok) events.push(r.event);
        }
        if (events.length) this.stats.stored += await this.store(events);
      }),
    );
    // The scene and the sockets: every message, in order, from where the warm scene stands; a
    // scene that has seen no stream message yet starts after what the log holds (the durable
    // consumer's ack floor), so a backlog waiting for the log moves the scene too.
    const from = this.scene.lastEvent.streamSeq ? this.scene.lastEvent.streamSeq + 1 : ackFloor + 1;
    this.stops.push(
      js.ordered({ stream: o.streamName, fromSeq: from, batch: JS_BATCH }, (batch) => {
        for (const m of batch) {
          const r = this.readStream(m, true);
          this.readCache.set(m.seq, r);
          if (r.ok) this.applyAndPublish(r.event);
        }
        // Sequences the durable consumer gave another instance are never claimed here: keep the newest.
        if (this.readCache.size > READ_CACHE_MAX) {
          let drop = this.readCache.size - READ_CACHE_MAX;
          for (const k of this.readCache.keys()) {
            if (drop-- <= 0) break;
            this.readCache.delete(k);
          }
        }
      }),
    );
  }

  private startSubscriptions(): void {
    const { o } = this;
    this.mode = o.broker.engine === "nats" ? "nats" : "local";
    for (const pattern of LIVING_MAP_SUBJECTS) {
      // echo: the city's own events (city.event.room_message) belong on the map too
      this.stops.push(
        o.broker.subscribe(
          pattern,
          (subject, payload) => {
            this.stats.received++;
            const r = readEvent(subject, payload, o.clock.now(), o.maxEventBytes, { source: this.mode === "nats" ? "nats" : "local" });
            if (!r.ok) return this.bad(subject, r.reason);
            this.applyAndPublish(r.event);
            this.queueWrite(r.event);
          },
          { echo: true },
        ),
      );
    }
  }

  /**
   * Reads one stream message. Counted (received, refused) by the ordered reader only, which sees
   * every message once on every instance; refused payloads are acknowledged with the rest.
   */
  private readStream(m: StreamEvent, count: boolean): ReadEvent {
    const r = readEvent(m.subject, m.payload, m.time, this.o.maxEventBytes, { source: "jetstream", stream: this.o.streamName, seq: m.seq });
    if (count) {
      this.stats.received++;
      if (!r.ok) this.bad(m.subject, r.reason);
    }
    return r;
  }

  /**
   * Writes events to the log. When the store refuses what one contains (e.g. PostgreSQL's jsonb
   * takes no `\u0000`), the batch is split until that one is alone; it is counted as `unstorable`
   * and left out, so it cannot hold the rest back (or, with JetStream, come back forever).
   * @returns how many were new
   * @throws what the store throws for any other reason (unreachable: try again later)
   */
  private async store(events: LivingMapEventWrite[]): Promise<number> {
    try {
      return await this.o.store.appendLivingMapEvents(events);
    } catch (err) {
      if (!isDataError(err)) throw err;
      if (events.length === 1) {
        this.bad(events[0]!.event_type, "unstorable", err);
        return 0;
      }
      const half = events.length >> 1;
      return (await this.store(events.slice(0, half))) + (await this.store(events.slice(half)));
    }
  }

  private applyAndPublish(e: LivingMapEventWrite): void {
    this.scene.apply(e.event_type, e.payload, e.timestamp);
    this.scene.markApplied(e.id, 0, e.stream_seq);
    this.stats.applied++;
    const frame = encodeStreamEvent(e);
    this.o.hub.publishLocal(LIVING_MAP_TOPIC, frame);
    const r = { id: e.id, frame };
    for (const rec of this.recovering) rec.buffer.push(r);
    this.recent.push(r);
    this.recentIds.set(e.id, this.recentBase + this.recent.length - 1);
    if (this.recent.length > RECENT_MAX * 1.5) {
      const cut = this.recent.length - RECENT_MAX;
      for (const old of this.recent.slice(0, cut)) this.recentIds.delete(old.id);
      this.recent = this.recent.slice(cut);
      this.recentBase += cut;
    }
  }

  /**
   * The events after `since`, oldest first: the recent ones when `since` is recent; else the log's
   * after it, then the recent ones the log does not have yet (applied here, not written yet).
   * @throws AppError `invalid_cursor`
   */
  private async missedSince(since: string): Promise<{ events: Recent[]; truncated: boolean }> {
    const max = this.o.recoveryMax;
    const at = this.recentIds.get(since);
    if (at !== undefined) {
      const events = this.recent.slice(at - this.recentBase + 1);
      return { events, truncated: events.length > max };
    }
    const seq = await this.o.store.livingMapEventSeq(since);
    if (seq === null) throw new AppError("invalid_cursor", `since: no event ${since} on this map (too old, or never seen)`);
    const rows = await this.o.store.livingMapEventsAfter(seq, max + 1);
    if (rows.length > max) return { events: [], truncated: true };
    const events: Recent[] = rows.map((r) => ({ id: r.id, frame: encodeStreamEvent(r) }));
    const have = new Set(events.map((r) => r.id));
    for (const r of this.recent) if (!have.has(r.id)) events.push(r);
    return { events: events.slice(-max), truncated: false };
  }

  private bad(subject: string, reason: BadEvent, err?: unknown): void {
    const key = `${familyOf(subject)}|${reason}`;
    this.stats.bad.set(key, (this.stats.bad.get(key) ?? 0) + 1);
    const now = this.o.clock.now();
    const last = this.badLogged.get(subject) ?? -Infinity;
    if (now - last < 60_000) return;
    this.badLogged.set(subject, now);
    this.o.log.warn(reason === "unstorable" ? "living map: the store refused an event; left out of the history" : "living map: ignored a malformed event", { subject, reason, ...(err ? { err } : {}) });
  }

  // ---- the log without JetStream ---------------------------------------------------------

  /**
   * Writes what this instance has queued for `living_map_history` now, without waiting for the
   * next batch (core NATS or the in-process bus; with JetStream the durable consumer writes, and
   * nothing is queued here). Resolves when the queue is empty; while the store refuses writes it
   * keeps retrying once a second, so it resolves only once the store is back. Never rejects.
   */
  flushHistory(): Promise<void> {
    return this.flushWrites().catch(() => {});
  }

  private queueWrite(e: LivingMapEventWrite): void {
    if (this.writeQueue.length >= WRITE_QUEUE_MAX) {
      this.writeQueue.shift();
      this.stats.dropped++;
    }
    this.writeQueue.push(e);
    if (!this.writing) {
      if (this.writeQueue.length >= WRITE_BATCH) void this.flushWrites();
      else if (this.writeQueue.length === 1) this.scheduler.after(WRITE_EVERY_MS, () => void this.flushWrites());
    }
  }

  /** Writes what is queued, a batch at a time; a failed batch waits and is tried again. */
  private flushWrites(): Promise<void> {
    this.writing ??= (async () => {
      try {
        while (this.writeQueue.length) {
          const batch = this.writeQueue.slice(0, WRITE_BATCH);
          try {
            this.stats.stored += await this.store(batch);
            this.writeQueue.splice(0, batch.length);
          } catch (err) {
            this.stats.storeFailures++;
            this.o.log.warn("living map: could not write events to the history; retrying", { events: batch.length, err });
            await new Promise<void>((r) => this.scheduler.after(1000, r));
          }
        }
      } finally {
        this.writing = null;
      }
    })();
    return this.writing;
  }

  // ---- the city layer, snapshots, retention ----------------------------------------------

  /**
   * Reads this process's own layer: rooms, who is online in them, messages of the last hour. Asked
   * for while a read runs, it runs once more after it (at start-up the first read can begin before
   * the default rooms exist, and the one asked for after they were created must not be lost).
   */
  async refreshCity(): Promise<void> {
    if (this.cityRefreshing) {
      this.cityRefreshAgain = true;
      return;
    }
    this.cityRefreshing = true;
    const now = this.o.clock.now();
    try {
      const rooms = await this.o.store.listRooms({ limit: 1000, offset: 0 });
      const counts = await this.o.store.messageCountsSince(new Date(now - 3_600_000).toISOString());
      const active = await this.o.presence.getOnlineCount().catch(() => 0);
      this.scene.setCity(
        rooms.map((r) => ({ id: r.id, slug: r.slug, name: r.name, online: this.o.presence.roomCount(r.id), messages_last_hour: counts.get(r.id) ?? 0 })),
        active,
      );
      this.scene.setSourceStatus({ name: "city-service", status: "ok", fetched_at: new Date(now).toISOString() });
    } catch (err) {
      const prev = this.scene.sourceStatuses().find((s) => s.name === "city-service")!;
      this.scene.setSourceStatus({ name: "city-service", status: prev.fetched_at ? "stale" : "unavailable", fetched_at: prev.fetched_at, error: (err as Error).message });
    } finally {
      this.cityRefreshing = false;
      if (this.cityRefreshAgain) {
        this.cityRefreshAgain = false;
        void this.refreshCity();
      }
    }
  }

  private async warm(): Promise<void> {
    try {
      const snap = await this.o.store.latestLivingMapSnapshot();
      if (snap && typeof snap.scene === "object" && snap.scene) this.scene.restore(snap.scene as Record<string, unknown>);
      let after = snap?.lastEventSeq ?? 0;
      // The log after the snapshot (bounded: a long outage warms from the newest part).
      for (let n = 0; n < 200; n++) {
        const rows = await this.o.store.livingMapEventsAfter(after, 1000);
        for (const r of rows) {
          this.scene.apply(r.event_type, r.payload, r.timestamp);
          this.scene.markApplied(r.id, r.seq, r.stream_seq);
          after = r.seq;
        }
        if (rows.length < 1000) break;
      }
    } catch (err) {
      this.o.log.warn("living map: could not warm the scene from the store; starting empty", { err });
    }
  }

  /** Saves the scene with the log position it includes. */
  async saveSnapshot(): Promise<void> {
    const last = await this.o.store.livingMapLastSeq();
    // Without JetStream everything logged was applied first; with it, the stream position says.
    const lastEventSeq = this.mode === "jetstream" ? this.scene.lastEvent.seq : last.seq;
    await this.o.store.saveLivingMapSnapshot({
      scene: this.scene.dump(), lastEventSeq, lastStreamSeq: this.scene.lastEvent.streamSeq, createdAt: new Date(this.o.clock.now()).toISOString(),
    });
    this.stats.snapshotsSaved++;
  }

  /** Retention: events and snapshots older than LIVING_MAP_RETENTION_DAYS (seed 002: 30 days). */
  async prune(): Promise<number> {
    const before = new Date(this.o.clock.now() - this.o.retentionDays * 86_400_000).toISOString();
    let total = 0;
    try {
      for (;;) {
        const n = await this.o.store.pruneLivingMap(before, 10_000);
        total += n;
        if (n < 10_000) break;
      }
    } catch (err) {
      this.o.log.warn("living map: retention pass failed", { err });
    }
    this.stats.pruned += total;
    return total;
  }
}
