/**
 * Metrics (SPEC "Operations": `GET /metrics`, Prometheus text via prom-client). One registry per
 * city instance; gauges read the live objects when scraped, counters are bumped by the services.
 */
import { readdir } from "node:fs/promises";
import { Elysia } from "elysia";
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";
import type { Broker } from "../engine/broker/broker.ts";
import type { Hub } from "../engine/hub.ts";
import type { PresenceTracker } from "../engine/presence/presence.ts";
import type { RoomStreams } from "../engine/streams.ts";
import type { LivingMapService } from "../modules/living-map/service.ts";
import type { MatrixReport } from "../modules/matrix/service.ts";

/** What the metrics read; each is optional so a partial city (tests) can still expose some. */
export interface MetricsSources {
  hub: Hub;
  presence: PresenceTracker;
  streams?: RoomStreams;
  broker?: Broker;
  /** The presence service's counters. */
  presenceEvents?: { countsPublished: number; countsApplied: number; badEvents: number };
  livingMap?: LivingMapService;
  /** The Matrix sync loop's report (absent: no homeserver configured). */
  matrix?: () => MatrixReport;
}

export interface CityMetrics {
  readonly registry: Registry;
  /** Room messages committed and published by this instance. */
  readonly messages: Counter;
}

export function createMetrics(deps: MetricsSources): CityMetrics {
  const registry = new Registry();
  // prom-client's `nodejs_eventloop_lag_*` come from perf_hooks.monitorEventLoopDelay, a timer at
  // this resolution: at its default of 10 ms it woke an idle binary 100 times a second, two thirds
  // of all its wake-ups. Once a second here; the fine-grained figure is
  // `daarion_city_event_loop_delay_seconds` (a 25 ms timer, see EventLoopDelay), a histogram.
  collectDefaultMetrics({ register: registry, prefix: "daarion_city_", eventLoopMonitoringPrecision: 1000 });
  // Per heap space sizes come from a walk of the whole heap in Bun (v8.getHeapSpaceStatistics: 17 ms
  // at 300k objects, more with more), which would stall every socket once per scrape. The totals
  // (`nodejs_heap_size_*`, from process.memoryUsage) stay.
  for (const kind of ["total", "used", "available"]) registry.removeSingleMetric(`daarion_city_nodejs_heap_space_size_${kind}_bytes`);
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
  // prom-client's process_heap_bytes is VmData from /proc/self/status: in Bun that counts the
  // address space JavaScriptCore reserves up front (~6 GB for a process of 86 MB resident). The
  // figure under that name is the JavaScript heap's committed size instead.
  registry.removeSingleMetric("daarion_city_process_heap_bytes");
  gauge("daarion_city_process_heap_bytes", "JavaScript heap committed, bytes (JavaScriptCore; not VmData, which counts reserved address space)", () => process.memoryUsage().heapTotal);
  // prom-client counts open descriptors with readdirSync("/proc/self/fd"): with 10,000 sockets
  // that held the event loop 12-33 ms per scrape. The same count is read off the loop
  // (fs.promises.readdir: the longest loop gap 0.3-3.5 ms), under the same name, on Linux only as before.
  if (registry.getSingleMetric("daarion_city_process_open_fds")) {
    registry.removeSingleMetric("daarion_city_process_open_fds");
    new Gauge({
      name: "daarion_city_process_open_fds", help: "Number of open file descriptors.", registers: [registry],
      async collect() {
        try {
          this.set((await readdir("/proc/self/fd")).length);
        } catch {
          /* no /proc: left as it was */
        }
      },
    });
  }
  /** A counter mirroring a monotonic number kept by the engine. */
  const mirror = (name: string, help: string, read: () => number) => {
    let seen = 0;
    return new Counter({
      name, help, registers: [registry],
      collect() {
        const now = read();
        if (now > seen) this.inc(now - seen);
        seen = now;
      },
    });
  };
  /** A counter mirroring monotonic numbers kept by the engine, one series per label set (`read` gives each with its total). */
  const mirrorLabelled = (name: string, help: string, labelNames: string[], read: () => Iterable<[Record<string, string>, number]>) => {
    const seen = new Map<string, number>();
    return new Counter({
      name, help, labelNames, registers: [registry],
      collect() {
        for (const [labels, n] of read()) {
          const key = JSON.stringify(labels);
          this.inc(labels, Math.max(0, n - (seen.get(key) ?? 0)));
          seen.set(key, n);
        }
      },
    });
  };
  gauge("daarion_city_sockets_open", "Open WebSockets on this instance", () => deps.hub.socketCount());
  mirror("daarion_city_presence_flushes_total", "Presence round trips (one per flush tick with work)", () => deps.presence.stats.flushes);
  mirror("daarion_city_presence_heartbeats_received_total", "Heartbeats handed to presence (sockets and Matrix), before per-tick deduplication", () => deps.presence.stats.received);
  mirror("daarion_city_presence_heartbeats_total", "Heartbeats written (after per-tick deduplication)", () => deps.presence.stats.heartbeats);
  mirror("daarion_city_presence_flush_failures_total", "Presence flushes that failed (backend unreachable)", () => deps.presence.stats.flushFailures);
  mirror("daarion_city_presence_expiry_sweeps_total", "Presence expiry script calls (a sweep makes one per 1,000 expiries, at least one)", () => deps.presence.stats.expirySweeps);
  gauge("daarion_city_presence_pending", "Presence operations waiting for the next flush", () => deps.presence.pendingCount());
  gauge("daarion_city_presence_up", "1 when the presence backend answers", () => (deps.presence.state() === "up" ? 1 : 0));
  mirror("daarion_city_sockets_closed_slow_total", "Sockets closed with 4008 (slow consumer)", () => deps.hub.stats.slowConsumersClosed);
  mirror("daarion_city_sockets_closed_token_expired_total", "Sockets closed with 4001 (token expired without auth.refresh)", () => deps.hub.stats.tokensExpired);
  const streams = deps.streams;
  if (streams) {
    gauge("daarion_city_room_streams", "Rooms this instance serves (has local sockets in, plus the linger)", () => streams.roomCount());
    mirror("daarion_city_room_gap_fills_total", "Store reads that filled a gap in a room's seq", () => streams.stats.gapFills);
    mirror("daarion_city_room_messages_filled_total", "Messages delivered from the store because the broker had not brought them", () => streams.stats.filledFromStore);
    mirror("daarion_city_room_duplicates_dropped_total", "Publications dropped because their seq was already delivered", () => streams.stats.duplicatesDropped);
    mirror("daarion_city_room_position_checks_total", "Position checks against the store (periodic and after broker outages)", () => streams.stats.positionChecks);
    mirror("daarion_city_room_store_read_failures_total", "Failed store reads of the room streams (retried)", () => streams.stats.storeReadFailures);
  }
  const broker = deps.broker;
  if (broker) {
    gauge("daarion_city_broker_up", "1 while both broker links are up", () => (broker.state() === "up" ? 1 : 0));
    const bus = (broker as { stats?: { batches: number; delivered: number; workerRestarts: number; handlerErrors: number } }).stats;
    if (bus) {
      mirror("daarion_city_bus_batches_total", "Batches the bus (worker) handed to the main thread", () => bus.batches);
      mirror("daarion_city_bus_delivered_total", "Inbound NATS publications handed to handlers", () => bus.delivered);
      mirror("daarion_city_bus_worker_restarts_total", "Bus workers replaced after dying or stalling", () => bus.workerRestarts);
      mirror("daarion_city_bus_handler_errors_total", "Inbound publications whose handler threw", () => bus.handlerErrors);
    }
  }
  const pe = deps.presenceEvents;
  if (pe) {
    mirror("daarion_city_presence_counts_published_total", "Room count changes this instance published (city.presence.room.<slug>)", () => pe.countsPublished);
    mirror("daarion_city_presence_counts_applied_total", "Room count changes applied from other instances", () => pe.countsApplied);
    mirror("daarion_city_broker_bad_events_total", "Malformed broker events ignored", () => pe.badEvents);
  }
  const map = deps.livingMap;
  if (map) {
    mirror("daarion_city_living_map_events_received_total", "Living map events received from the bus (before checks)", () => map.stats.received);
    mirror("daarion_city_living_map_events_applied_total", "Living map events applied to this instance's scene and streamed", () => map.stats.applied);
    mirror("daarion_city_living_map_events_stored_total", "Living map events this instance wrote to the history", () => map.stats.stored);
    mirror("daarion_city_living_map_events_dropped_total", "Living map events dropped because the history fell too far behind", () => map.stats.dropped);
    mirror("daarion_city_living_map_history_write_failures_total", "Failed history writes (retried)", () => map.stats.storeFailures);
    mirror("daarion_city_living_map_snapshots_saved_total", "Scene snapshots saved", () => map.stats.snapshotsSaved);
    mirrorLabelled(
      "daarion_city_living_map_bad_events_total",
      "NATS payloads ignored (malformed, oversize) or left out of the history (unstorable: the store refused them), by subject family and reason",
      ["family", "reason"],
      function* () {
        for (const [key, n] of map.stats.bad) {
          const [family, reason] = key.split("|") as [string, string];
          yield [{ family, reason }, n];
        }
      },
    );
    new Gauge({
      name: "daarion_city_living_map_source_up", help: "1 when a living map upstream's last fetch worked (0: stale or unavailable; absent: not configured)",
      labelNames: ["source"], registers: [registry],
      collect() {
        for (const s of map.scene.sourceStatuses()) if (s.status !== "not_configured") this.set({ source: s.name }, s.status === "ok" ? 1 : 0);
      },
    });
    // every configured source has both series, 0 included
    mirrorLabelled("daarion_city_living_map_upstream_fetches_total", "Living map upstream reads (after the retry), by source and outcome (ok, failed)", ["source", "outcome"], function* () {
      for (const [source, st] of map.upstreamStats) for (const outcome of ["ok", "failed"] as const) yield [{ source, outcome }, st[outcome]];
    });
    gauge("daarion_city_living_map_scene_version", "Changes of the living map's scene so far", () => map.scene.changes);
  }
  const matrix = deps.matrix;
  if (matrix) {
    gauge("daarion_city_matrix_leader", "1 while this instance holds the sync lease and runs the Matrix sync loop", () => (matrix().leader ? 1 : 0));
    gauge("daarion_city_matrix_last_sync_age_seconds", "Seconds since the sync loop's last successful /sync (-1 before one)", () => matrix().lastSyncAgeSeconds ?? -1);
    gauge("daarion_city_matrix_backoff_ms", "Current wait of the sync loop before its next attempt (0 when not backing off)", () => matrix().backoffMs);
    gauge("daarion_city_matrix_presence_known", "1 once the homeserver has sent presence (0: unknown, presence may be disabled there)", () => (matrix().presence === "ok" ? 1 : 0));
    gauge("daarion_city_matrix_rooms", "Matrix rooms the sync loop tracks", () => matrix().rooms);
    gauge("daarion_city_matrix_members", "Matrix users in the tracked rooms", () => matrix().members);
    mirror("daarion_city_matrix_user_presence_published_total", "Matrix user presence changes published on city.presence.user.<localpart>", () => matrix().usersPublished);
    mirrorLabelled("daarion_city_matrix_sync_errors_total", "Sync loop errors by kind (of the lease holder)", ["kind"], function* () {
      for (const [kind, n] of Object.entries(matrix().errors)) yield [{ kind }, n ?? 0];
    });
  }
  const messages = new Counter({ name: "daarion_city_room_messages_total", help: "Room messages committed and published here", registers: [registry] });
  return { registry, messages };
}

/** `GET /metrics` in the Prometheus text format. */
export function metricsController(metrics: CityMetrics) {
  return new Elysia({ name: "metrics" }).get(
    "/metrics",
    async ({ set }) => {
      set.headers["content-type"] = metrics.registry.contentType;
      return metrics.registry.metrics();
    },
    { detail: { tags: ["Operations"], summary: "Prometheus metrics" } },
  );
}
