/**
 * Operations routes (SPEC "HTTP API", Operations): `/healthz` says the process is up; `/readyz`
 * reports each engine and answers 503 while the city cannot serve (store down, shutting down).
 */
import { Elysia, t } from "elysia";

export type EngineState = "up" | "down" | "degraded" | "off";

export interface ReadinessReport {
  status: "ready" | "degraded" | "not_ready";
  engines: Record<string, { engine: string; state: EngineState; detail?: string }>;
  /** The Matrix sync loop (with a homeserver configured). */
  matrix?: Record<string, unknown>;
}

/** @param readiness computes the current report (may do a round trip to each engine) */
export function opsController(readiness: () => Promise<ReadinessReport>) {
  const Report = t.Object({
    status: t.Union([t.Literal("ready"), t.Literal("degraded"), t.Literal("not_ready")]),
    engines: t.Record(t.String(), t.Object({ engine: t.String(), state: t.String(), detail: t.Optional(t.String()) })),
    matrix: t.Optional(t.Record(t.String(), t.Unknown(), { description: "the Matrix sync loop: leader, state, presence, last sync age, backoff, errors by kind" })),
  });
  return new Elysia({ name: "ops" })
    .get("/healthz", () => ({ status: "ok" as const }), {
      response: t.Object({ status: t.Literal("ok") }),
      detail: { tags: ["Operations"], summary: "Process is up" },
    })
    .get(
      "/readyz",
      async ({ set }) => {
        const report = await readiness();
        if (report.status === "not_ready") set.status = 503;
        return report;
      },
      { response: { 200: Report, 503: Report }, detail: { tags: ["Operations"], summary: "Each engine's state; 503 when not ready" } },
    );
}
