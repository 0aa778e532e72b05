/**
 * TypeBox schemas of the Living Map API (seed 004 §4, SPEC "HTTP API"): request validation and
 * the OpenAPI document.
 */
import { t } from "elysia";
import { LivingMapSnapshot } from "../../engine/frames.ts";

export const ENTITY_TYPES = ["city", "space", "node", "agent", "dao", "microdao", "channel"] as const;

export const HealthModel = t.Object({
  status: t.Literal("ok"),
  service: t.String({ examples: ["living-map-service"] }),
  version: t.String(),
  time: t.String({ format: "date-time" }),
});

/** The snapshot (seed 004 §4.2, plus meta.sources[]): the same schema the stream's first frame has (`engine/frames.ts`). */
export const SnapshotModel = t.Object(LivingMapSnapshot.properties, { description: "seed 004 §4.2, plus meta.sources[]: how fresh each upstream's part is" });

export const EntityItemModel = t.Object({
  id: t.String({ examples: ["agent:sofia"] }),
  type: t.UnionEnum(ENTITY_TYPES),
  label: t.String(),
  status: t.String(),
  layer: t.Union([t.Literal("city"), t.Literal("space"), t.Literal("nodes"), t.Literal("agents")]),
});

export const EntitiesQuery = t.Object({
  type: t.Optional(t.UnionEnum(ENTITY_TYPES, { description: "city, space, node, agent, dao, microdao or channel" })),
  limit: t.Optional(t.Integer({ minimum: 1, maximum: 1000, default: 100 })),
});

export const EntityModel = t.Object({
  id: t.String(),
  type: t.String(),
  layer: t.String(),
  data: t.Record(t.String(), t.Unknown(), { description: "its state on the map, and `source`: what its upstream last said of it" }),
});

export const HistoryQuery = t.Object({
  since: t.Optional(t.String({ description: "ISO date-time: only events at or after it" })),
  before: t.Optional(t.String({ description: "an event id: the page of events older than it" })),
  limit: t.Optional(t.Integer({ minimum: 1, maximum: 1000, default: 200 })),
});

export const HistoryItemModel = t.Object({
  id: t.String(),
  timestamp: t.String({ format: "date-time" }),
  event_type: t.String({ examples: ["node.metrics.gpu-1"] }),
  payload: t.Record(t.String(), t.Unknown()),
  source: t.String({ description: "jetstream, nats or local" }),
  entity_id: t.Union([t.String(), t.Null()]),
  entity_type: t.Union([t.String(), t.Null()]),
});
