/**
 * Metrics (SPEC "Operations": `GET /metrics`, Prometheus text via prom-client). One registry per
 * city instance; gauges read the live objects when scraped, counters are bumped by the services.
 */
import { Elysia } from "elysia";
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";
import type { Hub } from "../engine/hub.ts";
import type { PresenceTracker } from "../engine/presence/presence.ts";

export interface CityMetrics {
  readonly registry: Registry;
  /** Room messages committed and published by this instance. */
  readonly messages: Counter;
}

export function createMetrics(deps: { hub: Hub; presence: PresenceTracker }): CityMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "daarion_city_" });
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
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
  gauge("daarion_city_sockets_open", "Open WebSockets on this instance", () => deps.hub.socketCount());
  mirror("daarion_city_presence_flushes_total", "Presence round trips (one per flush tick with work)", () => deps.presence.stats.flushes);
  mirror("daarion_city_presence_heartbeats_total", "Heartbeats written (after per-tick deduplication)", () => deps.presence.stats.heartbeats);
  mirror("daarion_city_presence_flush_failures_total", "Presence flushes that failed (backend unreachable)", () => deps.presence.stats.flushFailures);
  gauge("daarion_city_presence_pending", "Presence operations waiting for the next flush", () => deps.presence.pendingCount());
  gauge("daarion_city_presence_up", "1 when the presence backend answers", () => (deps.presence.state() === "up" ? 1 : 0));
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
