/**
 * Second Me HTTP controller (seed 000 §6.2, seed 001 routes). Every route needs a token; the user
 * is the token's subject, never a body field.
 */
import { Elysia, t } from "elysia";
import type { TokenVerifier } from "../../auth/tokens.ts";
import { authPlugin, requireUser } from "../../plugins/auth.ts";
import type { SecondMeService } from "./service.ts";

const Timestamp = t.String({ format: "date-time" });
const Entry = t.Object({
  role: t.Union([t.Literal("user"), t.Literal("assistant")]),
  content: t.String(),
  created_at: Timestamp,
  status: t.Union([t.Literal("pending"), t.Literal("answered"), t.Literal("unanswered")], { description: "unanswered: the agent failed; nothing was made up" }),
});
const ErrorModel = t.Object({ error: t.Object({ code: t.String(), message: t.String() }) });
const errors = { 400: ErrorModel, 401: ErrorModel, 429: ErrorModel, 502: ErrorModel, 503: ErrorModel, 504: ErrorModel };
const security = [{ bearer: [] }];

export function secondmeController(service: SecondMeService, verifier: TokenVerifier) {
  return new Elysia({ name: "secondme" })
    .use(authPlugin(verifier))
    .post("/secondme/invoke", ({ body, principal }) => service.invoke(requireUser(principal), body.prompt), {
      body: t.Object({ prompt: t.String({ description: "1 to 8000 characters after trimming" }) }, { additionalProperties: false }),
      response: { 200: t.Object({ reply: t.String(), history: t.Array(Entry) }), ...errors },
      detail: { tags: ["Second Me"], summary: "Ask your Second Me (through Agents Core)", security },
    })
    .get("/secondme/history", ({ query, principal }) => service.history(requireUser(principal), query.limit ?? 5), {
      query: t.Object({ limit: t.Optional(t.Integer({ minimum: 1, maximum: 100, default: 5 })) }),
      response: { 200: t.Array(Entry), ...errors },
      detail: { tags: ["Second Me"], summary: "Your last messages with Second Me, oldest first", security },
    })
    .get("/secondme/profile", ({ principal }) => service.profile(requireUser(principal)), {
      response: {
        200: t.Object({
          user_id: t.String(),
          sessions: t.Integer(),
          messages: t.Integer(),
          total_tokens: t.Integer(),
          avg_latency_ms: t.Union([t.Integer(), t.Null()]),
          last_interaction: t.Union([Timestamp, t.Null()]),
        }),
        ...errors,
      },
      detail: { tags: ["Second Me"], summary: "Your Second Me numbers", security },
    })
    .post("/secondme/history/clear", async ({ principal }) => ({ cleared: await service.clear(requireUser(principal)) }), {
      response: { 200: t.Object({ cleared: t.Integer({ description: "messages deleted" }) }), ...errors },
      detail: { tags: ["Second Me"], summary: "Delete your Second Me conversation", security },
    });
}
