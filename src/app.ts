/**
 * createApp(deps): the root Elysia app (HTTP only). It never listens: `server.ts` serves it next to
 * the sockets, and tests drive it with `app.handle(new Request(...))`.
 */
import { swagger } from "@elysiajs/swagger";
import { asyncApiDocument } from "./engine/asyncapi.ts";
import { Elysia } from "elysia";
import type { Principal, TokenVerifier } from "./auth/tokens.ts";
import type { Logger } from "./log.ts";
import { cityController } from "./modules/city/index.ts";
import { livingMapController } from "./modules/living-map/index.ts";
import type { LivingMapService } from "./modules/living-map/service.ts";
import type { CityService } from "./modules/city/service.ts";
import { opsController, type ReadinessReport } from "./modules/ops/index.ts";
import { secondmeController } from "./modules/secondme/index.ts";
import type { SecondMeService } from "./modules/secondme/service.ts";
import { errorPlugin } from "./plugins/errors.ts";
import { metricsController, type CityMetrics } from "./plugins/metrics.ts";
import { strictQueryIntegers } from "./plugins/query.ts";

export interface AppDeps {
  city: CityService;
  secondme: SecondMeService;
  verifier: TokenVerifier;
  readiness: () => Promise<ReadinessReport>;
  log: Logger;
  version: string;
  metrics: CityMetrics;
  livingMap: LivingMapService;
  /** LIVING_MAP_PUBLIC */
  livingMapPublic: boolean;
  /** {@link secretFingerprint} of the HS256 secret the server verifies with. */
  jwtFingerprint?: string;
  /** Who may change rooms (SPEC `PATCH /city/rooms/{room_id}`); default: nobody. */
  isAdmin?: (p: Principal) => boolean;
}

export function createApp(deps: AppDeps) {
  const asyncApi = asyncApiDocument(deps.version);
  return new Elysia({ normalize: false })
    .use(errorPlugin(deps.log))
    .use(strictQueryIntegers(["limit", "offset"]))
    .use(
      swagger({
        path: "/swagger",
        documentation: {
          info: { title: "DAARION City realtime backend", version: deps.version, description: "Rooms, feed, presence, Second Me and the Living Map. Sockets: /asyncapi.json." },
          components: { securitySchemes: { bearer: { type: "http", scheme: "bearer", bearerFormat: "JWT" } } },
        },
      }),
    )
    .get("/auth/fingerprint", () => ({ alg: "HS256" as const, fingerprint: deps.jwtFingerprint ?? null }), {
      detail: { tags: ["Ops"], summary: "Fingerprint of the HS256 secret this server verifies with (`daarion-city token` compares it with its own)" },
    })
    .get("/asyncapi.json", () => asyncApi, { detail: { tags: ["Ops"], summary: "AsyncAPI 3.0 document of every socket route and frame, in and out" } })
    .use(opsController(deps.readiness))
    .use(metricsController(deps.metrics))
    .use(cityController(deps.city, deps.verifier, deps.isAdmin ?? (() => false)))
    .use(secondmeController(deps.secondme, deps.verifier))
    .use(livingMapController(deps.livingMap, deps.verifier, deps.livingMapPublic));
}

export type App = ReturnType<typeof createApp>;
