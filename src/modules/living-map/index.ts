/**
 * Living Map HTTP controller (seed 004 §4): health, snapshot, entities, one entity, history. Reads
 * need a token unless LIVING_MAP_PUBLIC is on (seed 004 §7 recommends auth); health is open.
 */
import { Elysia, t } from "elysia";
import type { Principal, TokenVerifier } from "../../auth/tokens.ts";
import { authPlugin, requireUser } from "../../plugins/auth.ts";
import { ErrorModel } from "../city/model.ts";
import { EntitiesQuery, EntityItemModel, EntityModel, HealthModel, HistoryItemModel, HistoryQuery, SnapshotModel } from "./model.ts";
import type { LivingMapService } from "./service.ts";

const errors = { 400: ErrorModel, 401: ErrorModel, 404: ErrorModel, 503: ErrorModel };

export function livingMapController(map: LivingMapService, verifier: TokenVerifier, isPublic: boolean) {
  const reader = (principal: Principal | null) => {
    if (!isPublic) requireUser(principal);
  };
  const security = isPublic ? [] : [{ bearer: [] }];
  return new Elysia({ name: "living-map" })
    .use(authPlugin(verifier))
    .get("/living-map/health", () => map.health(), {
      response: HealthModel,
      detail: { tags: ["Living Map"], summary: "Health check (seed 004 §4.1); open to anyone" },
    })
    .get(
      "/living-map/snapshot",
      ({ principal }) => {
        reader(principal);
        // Serialised once per change of the scene; never waits on an upstream.
        return new Response(map.snapshotJson(), { headers: { "content-type": "application/json" } });
      },
      {
        response: { 200: SnapshotModel, ...errors },
        detail: { tags: ["Living Map"], summary: "The whole network in four layers, with how fresh each source is", security },
      },
    )
    .get(
      "/living-map/entities",
      ({ principal, query }) => {
        reader(principal);
        return map.entities(query.type, query.limit ?? 100);
      },
      {
        query: EntitiesQuery,
        response: { 200: t.Object({ items: t.Array(EntityItemModel) }), ...errors },
        detail: { tags: ["Living Map"], summary: "Every entity, flat (optionally of one type)", security },
      },
    )
    .get(
      "/living-map/entities/:id",
      ({ principal, params }) => {
        reader(principal);
        return map.entity(params.id);
      },
      {
        params: t.Object({ id: t.String({ examples: ["node:gpu-1"] }) }),
        response: { 200: EntityModel, ...errors },
        detail: { tags: ["Living Map"], summary: "One entity: its state here and what its source last said of it", security },
      },
    )
    .get(
      "/living-map/history",
      ({ principal, query }) => {
        reader(principal);
        return map.history({ since: query.since, before: query.before, limit: query.limit ?? 200 });
      },
      {
        query: HistoryQuery,
        response: { 200: t.Object({ items: t.Array(HistoryItemModel) }), ...errors },
        detail: { tags: ["Living Map"], summary: "The event log, newest first; `before` (an event id) pages back", security },
      },
    );
}
