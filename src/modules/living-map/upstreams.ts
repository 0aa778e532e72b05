/**
 * The living map's upstreams (seed 004 §3.1–§3.2): five HTTP services, each behind its own
 * resilience policy (cockatiel: a timeout per attempt, one retry, a circuit breaker that opens
 * after 3 failures in a row and tries again after LIVING_MAP_BREAKER_OPEN_MS), fetched in
 * parallel, in the background,
 * every LIVING_MAP_REFRESH_MS. A snapshot never waits on them: it shows what each last said
 * (stale-while-revalidate), and `meta.sources[]` says how fresh that is.
 *
 * Paths (seed 004 §3.2), each base URL from its env var:
 * - space-service (SPACE_SERVICE_URL): `GET /api/space/scene` → `{planets, nodes}`
 * - agents-service (AGENTS_SERVICE_URL): `GET /agents`, and `GET /agents/metrics` (optional)
 * - microdao-service (MICRODAO_SERVICE_URL): `GET /microdaos`
 * - dao-service (DAO_SERVICE_URL): `GET /dao`, and `GET /dao/proposals/summary` (optional)
 * - usage-engine (USAGE_ENGINE_URL): `GET /internal/usage/summary?period_hours=24`
 * Lists are read from a JSON array, or the first array under `items`, `data`, `results` or the
 * resource's own name; an item without an id is skipped. Anything else is a bad response.
 */
import {
  BrokenCircuitError, circuitBreaker, ConsecutiveBreaker, handleAll, retry, TaskCancelledError, timeout, TimeoutStrategy, wrap, type IPolicy,
} from "cockatiel";
import { entityId, type Scene, type SourceName } from "./scene.ts";

export interface UpstreamUrls {
  space: string | null;
  agents: string | null;
  microdao: string | null;
  dao: string | null;
  usage: string | null;
}

type Json = unknown;

/** A response that is not what the path promises. */
class BadResponse extends Error {}

/** The first array in `v` (itself, or under one of `keys`). @throws BadResponse */
function listOf(v: Json, ...keys: string[]): Record<string, unknown>[] {
  const arr = Array.isArray(v)
    ? v
    : typeof v === "object" && v !== null
      ? [...keys, "items", "data", "results"].map((k) => (v as Record<string, unknown>)[k]).find(Array.isArray)
      : undefined;
  if (!arr) throw new BadResponse(`expected a list${keys.length ? ` (or ${keys.join("/")})` : ""}, got ${typeof v === "object" ? "an object without one" : typeof v}`);
  return arr.filter((x): x is Record<string, unknown> => typeof x === "object" && x !== null && !Array.isArray(x));
}

/** By entity id, from a list or an object keyed by id; `{}` when the optional endpoint failed. */
function byId(v: Json, prefix: string, idKeys: string[]): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  if (typeof v !== "object" || v === null) return out;
  let items: Record<string, unknown>[];
  try {
    items = listOf(v);
  } catch {
    for (const [k, val] of Object.entries(v as Record<string, unknown>)) if (typeof val === "object" && val !== null) out.set(entityId(prefix, k)!, val as Record<string, unknown>);
    return out;
  }
  for (const it of items) {
    const id = entityId(prefix, idKeys.map((k) => it[k]).find((x) => x !== undefined));
    if (id) out.set(id, it);
  }
  return out;
}

/** One upstream: what it fetches and how it puts it into the scene. */
interface Upstream {
  name: SourceName;
  base: string | null;
  /** Fetches and applies; @returns a note on items it skipped, if any. @throws on failure */
  refresh(get: (path: string, optional?: boolean) => Promise<Json>): Promise<string | undefined>;
}

export interface UpstreamsOptions {
  urls: UpstreamUrls;
  scene: Scene;
  /** Per attempt, ms. */
  timeoutMs: number;
  /** After this long without a successful fetch, last-known data counts as stale, ms. */
  staleAfterMs: number;
  now: () => number;
  /** How long an open breaker waits before it lets one attempt through, ms. */
  breakerOpenMs: number;
}

export class Upstreams {
  private readonly list: Upstream[];
  private readonly policies = new Map<SourceName, IPolicy>();
  private readonly state = new Map<SourceName, { fetchedAt: number | null; error?: string }>();
  /** The fetch in flight of each upstream, by name. */
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Reads by configured source and outcome, for /metrics. */
  readonly stats = new Map<SourceName, { ok: number; failed: number }>();

  constructor(private readonly o: UpstreamsOptions) {
    const { scene } = o;
    const u = o.urls;
    this.list = [
      {
        name: "space-service", base: u.space,
        async refresh(get) {
          const j = (await get("/api/space/scene")) as Record<string, unknown>;
          const scene2 = (j && typeof j === "object" && !Array.isArray(j) && (j.scene ?? j.data)) || j;
          if (typeof scene2 !== "object" || scene2 === null || Array.isArray(scene2)) throw new BadResponse("expected an object with planets and nodes");
          const s = scene2 as Record<string, unknown>;
          if (!Array.isArray(s.planets) && !Array.isArray(s.nodes)) throw new BadResponse("expected planets and/or nodes");
          const skipped = scene.setSpace(Array.isArray(s.planets) ? listOf(s.planets) : [], Array.isArray(s.nodes) ? listOf(s.nodes) : []);
          return skipped ? `${skipped} item(s) without an id skipped` : undefined;
        },
      },
      {
        name: "agents-service", base: u.agents,
        async refresh(get) {
          const items = listOf(await get("/agents"), "agents");
          const metrics = byId(await get("/agents/metrics", true), "agent", ["agent_id", "id"]);
          const skipped = scene.setAgents(items, metrics);
          return skipped ? `${skipped} agent(s) without an id skipped` : undefined;
        },
      },
      {
        name: "microdao-service", base: u.microdao,
        async refresh(get) {
          const skipped = scene.setMicrodaos(listOf(await get("/microdaos"), "microdaos"));
          return skipped ? `${skipped} microDAO(s) without an id skipped` : undefined;
        },
      },
      {
        name: "dao-service", base: u.dao,
        async refresh(get) {
          const items = listOf(await get("/dao"), "daos", "dao");
          const proposals = byId(await get("/dao/proposals/summary", true), "dao", ["dao_id", "id"]);
          const skipped = scene.setDaos(items, proposals);
          return skipped ? `${skipped} DAO(s) without an id skipped` : undefined;
        },
      },
      {
        name: "usage-engine", base: u.usage,
        async refresh(get) {
          const items = listOf(await get("/internal/usage/summary?period_hours=24"), "agents", "by_agent");
          const usage = new Map<string, { llm_calls_24h: number; tokens_24h: number }>();
          for (const it of items) {
            const id = entityId("agent", it.agent_id ?? it.id);
            if (!id) continue;
            const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0);
            usage.set(id, { llm_calls_24h: n(it.llm_calls ?? it.calls ?? it.llm_calls_24h), tokens_24h: n(it.tokens ?? it.total_tokens ?? it.tokens_24h) });
          }
          scene.setEngineUsage(usage);
          return undefined;
        },
      },
    ];
    for (const up of this.list) {
      if (!up.base) continue;
      this.stats.set(up.name, { ok: 0, failed: 0 });
      this.policies.set(
        up.name,
        wrap(
          retry(handleAll, { maxAttempts: 1 }),
          circuitBreaker(handleAll, { halfOpenAfter: o.breakerOpenMs, breaker: new ConsecutiveBreaker(3) }),
          timeout(o.timeoutMs, TimeoutStrategy.Aggressive),
        ),
      );
      scene.setSourceStatus({ name: up.name, status: "unavailable", fetched_at: null, error: "not fetched yet" });
    }
  }

  /**
   * Fetches every configured upstream in parallel and updates the scene. Each upstream has at most
   * one fetch in flight, and a call starts a fetch for every upstream whose last one is done: a
   * slow upstream (up to its timeout) never holds back the refresh of the healthy ones, whose data
   * would otherwise age towards stale while every round waited for the slowest.
   * @returns a promise that settles when the fetches in flight at the call have settled
   */
  refresh(): Promise<void> {
    const fetches = this.list.filter((u) => u.base).map((u) => {
      let p = this.inFlight.get(u.name);
      if (!p) {
        p = this.refreshOne(u).finally(() => this.inFlight.delete(u.name));
        this.inFlight.set(u.name, p);
      }
      return p;
    });
    return Promise.allSettled(fetches).then(() => {});
  }

  /** Re-marks sources whose data has aged past `staleAfterMs` (called before a snapshot is read). */
  markAges(): void {
    const now = this.o.now();
    for (const up of this.list) {
      if (!up.base) continue;
      const st = this.state.get(up.name);
      if (!st?.fetchedAt || st.error) continue;
      if (now - st.fetchedAt > this.o.staleAfterMs) {
        this.o.scene.setSourceStatus({ name: up.name, status: "stale", fetched_at: new Date(st.fetchedAt).toISOString(), error: "no fresh data since" });
      }
    }
  }

  private async refreshOne(up: Upstream): Promise<void> {
    const policy = this.policies.get(up.name)!;
    const get = async (path: string, optional = false): Promise<Json> => {
      const url = up.base!.replace(/\/+$/, "") + path;
      const attempt = () =>
        policy.execute(async ({ signal }) => {
          const res = await fetch(url, { signal, headers: { accept: "application/json" } });
          if (!res.ok) throw new BadResponse(`${path} answered HTTP ${res.status}`);
          const text = await res.text();
          try {
            return JSON.parse(text) as Json;
          } catch {
            throw new BadResponse(`${path} answered something that is not JSON`);
          }
        });
      if (!optional) return attempt();
      return attempt().catch(() => ({}));
    };
    const prev = this.state.get(up.name);
    try {
      const note = await up.refresh(get);
      const now = this.o.now();
      this.state.set(up.name, { fetchedAt: now });
      this.stats.get(up.name)!.ok++;
      this.o.scene.setSourceStatus({ name: up.name, status: "ok", fetched_at: new Date(now).toISOString(), ...(note ? { error: note } : {}) });
    } catch (err) {
      this.stats.get(up.name)!.failed++;
      const error = describe(err);
      this.state.set(up.name, { fetchedAt: prev?.fetchedAt ?? null, error });
      if (up.name === "usage-engine" && !prev?.fetchedAt) this.o.scene.setEngineUsage(null);
      this.o.scene.setSourceStatus(
        prev?.fetchedAt
          ? { name: up.name, status: "stale", fetched_at: new Date(prev.fetchedAt).toISOString(), error }
          : { name: up.name, status: "unavailable", fetched_at: null, error },
      );
    }
  }
}

function describe(err: unknown): string {
  const e = err as Error;
  if (err instanceof BrokenCircuitError) return "circuit open after repeated failures; tried again later";
  if (err instanceof TaskCancelledError) return "timed out";
  if (e instanceof BadResponse) return `bad response: ${e.message}`;
  return e?.message ? `unreachable: ${e.message}` : String(err);
}
