/**
 * The Living Map's scene (seed 004 §4.2, seed 002): one picture of the network in four layers,
 * kept in memory and moved by two kinds of input:
 *
 * - **Upstream pictures** (`setSource`): what each of the six sources said when last asked. A
 *   source's picture replaces that source's previous one; nothing is ever invented for a source
 *   that is not configured or not answering (its part is empty, or last-known and marked stale).
 * - **Events** (`apply`): every event on the eight NATS subjects that names an entity updates it
 *   (a node's metrics, an agent's status, usage counters, a DAO's or microDAO's fields, room and
 *   channel activity). An entity known only from events lives in the scene like any other.
 *
 * The snapshot is serialised once per change and reused until the next one: reading it between
 * changes costs nothing but the send; the first read after a change serialises the scene once
 * (about 1 ms for 250 KB; `bench/README.md` "Living Map" has the p99 while 1,000 events/s flow).
 */

/** The six upstreams of seed 004 §3.1, by the names `meta.source_services` uses. */
export const SOURCE_NAMES = ["city-service", "space-service", "agents-service", "microdao-service", "dao-service", "usage-engine"] as const;
export type SourceName = (typeof SOURCE_NAMES)[number];

/** The family of a subject: its first two tokens (`node.metrics`). */
export function familyOf(subject: string): string {
  const a = subject.indexOf(".");
  const b = a < 0 ? -1 : subject.indexOf(".", a + 1);
  return b < 0 ? subject : subject.slice(0, b);
}

/** The city itself, always on the map. */
const CITY_ITEM: EntityItem = { id: "city:daarion", type: "city", label: "DAARION City", status: "active", layer: "city" };
const microdaoItem = (d: MicrodaoState): EntityItem => ({ id: d.id, type: "microdao", label: d.name ?? d.slug ?? d.id, status: d.status, layer: "city" });
const channelItem = (c: ChannelState): EntityItem => ({ id: c.id, type: "channel", label: c.name ?? c.slug ?? c.id, status: "active", layer: "city" });
const planetItem = (p: PlanetState): EntityItem => ({ id: p.id, type: p.type === "dao" ? "dao" : "space", label: p.name ?? p.id, status: p.status, layer: "space" });
const nodeItem = (n: NodeState): EntityItem => ({ id: n.id, type: "node", label: n.name ?? n.id, status: n.status, layer: "nodes" });
const agentItem = (a: AgentState): EntityItem => ({ id: a.id, type: "agent", label: a.name ?? a.id, status: a.status, layer: "agents" });

/** What `meta.sources[]` says of one upstream. */
export interface SourceStatus {
  name: SourceName;
  status: "ok" | "stale" | "unavailable" | "not_configured";
  /** When its data was last fetched successfully (ISO), or null. */
  fetched_at: string | null;
  error?: string;
}

export interface NodeMetrics {
  cpu?: number;
  gpu?: number;
  ram?: number;
  net_in?: number;
  net_out?: number;
}

/** A node (space-service's nodes, `node.metrics.*`). */
export interface NodeState {
  id: string;
  name: string | null;
  microdao_id: string | null;
  status: string;
  metrics: NodeMetrics;
  alerts: unknown[];
  updated_at: string | null;
}

/** An agent (agents-service, `agent.event.*`, usage). */
export interface AgentState {
  id: string;
  name: string | null;
  kind: string | null;
  microdao_id: string | null;
  status: string;
  usage: { llm_calls_24h: number; tokens_24h: number };
  updated_at: string | null;
}

export interface MicrodaoState {
  id: string;
  slug: string | null;
  name: string | null;
  status: string;
  agents: number | null;
  nodes: number | null;
}

/** A planet of the space layer: a DAO (dao-service) or what space-service calls a planet. */
export interface PlanetState {
  id: string;
  name: string | null;
  type: string;
  orbits: string[];
  status: string;
  proposals?: Record<string, unknown> | null;
}

/** A city room (this process) or a messaging channel (`messaging.message.created`). */
export interface ChannelState {
  id: string;
  slug: string | null;
  name: string | null;
  online: number | null;
  messages_last_hour: number;
}

/** One entity as `GET /living-map/entities` lists it (seed 004 §4.3). */
export interface EntityItem {
  id: string;
  type: "city" | "space" | "node" | "agent" | "dao" | "microdao" | "channel";
  label: string;
  status: string;
  layer: "city" | "space" | "nodes" | "agents";
}

/** Hourly buckets of usage per agent: the rolling 24 h counts when no usage-engine says otherwise. */
interface UsageBuckets {
  /** hour (epoch ms / 3,600,000) → [calls, tokens] */
  hours: Map<number, [number, number]>;
}

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string | null => (typeof v === "string" && v.length > 0 ? v : typeof v === "number" ? String(v) : null);

/** `prefix:id` unless the id already carries the prefix (seed 004 writes `node:gpu-1`, `agent:sofia`). */
export function entityId(prefix: string, raw: unknown): string | null {
  const s = str(raw);
  if (s === null) return null;
  return s.startsWith(`${prefix}:`) ? s : `${prefix}:${s}`;
}

export class Scene {
  private readonly nodes = new Map<string, NodeState>();
  private readonly agents = new Map<string, AgentState>();
  private readonly microdaos = new Map<string, MicrodaoState>();
  private readonly planets = new Map<string, PlanetState>();
  private readonly channels = new Map<string, ChannelState>();
  /** Raw upstream items, for `GET /living-map/entities/{id}`. */
  private readonly raw = new Map<string, unknown>();
  private readonly usage = new Map<string, UsageBuckets>();
  /** agent id → usage-engine's figures, when it answered (they win over event counting). */
  private engineUsage: Map<string, { llm_calls_24h: number; tokens_24h: number }> | null = null;
  private city = { active_users: 0, messages_last_hour: 0 };
  private readonly sources = new Map<SourceName, SourceStatus>();
  private version = 0;
  private serialised: { version: number; json: string } | null = null;
  /** The last event applied: its id and log seq (for snapshots and stream replay). */
  lastEvent: { id: string | null; seq: number; streamSeq: number | null } = { id: null, seq: 0, streamSeq: null };

  constructor(private readonly now: () => number) {
    for (const name of SOURCE_NAMES) this.sources.set(name, { name, status: "not_configured", fetched_at: null });
  }

  /** Grows with every change; a serialised snapshot is reused while it stays the same. */
  get changes(): number {
    return this.version;
  }

  // ---- sources ---------------------------------------------------------------------------

  /** Records what a source's last attempt gave (status only; the data goes through the setters below). */
  setSourceStatus(s: SourceStatus): void {
    const prev = this.sources.get(s.name);
    if (prev && prev.status === s.status && prev.fetched_at === s.fetched_at && prev.error === s.error) return;
    this.sources.set(s.name, s);
    this.touch();
  }

  sourceStatuses(): SourceStatus[] {
    return SOURCE_NAMES.map((n) => this.sources.get(n)!);
  }

  /** The city layer from this process: rooms with online users and messages of the last hour. */
  setCity(rooms: { id: string; slug: string; name: string; online: number; messages_last_hour: number }[], activeUsers: number): void {
    for (const id of [...this.channels.keys()]) if (id.startsWith("room:") && !rooms.some((r) => `room:${r.id}` === id)) this.channels.delete(id);
    let total = 0;
    for (const r of rooms) {
      const id = `room:${r.id}`;
      this.channels.set(id, { id, slug: r.slug, name: r.name, online: r.online, messages_last_hour: r.messages_last_hour });
      total += r.messages_last_hour;
    }
    this.city = { active_users: activeUsers, messages_last_hour: total };
    this.touch();
  }

  /** space-service's scene: planets and nodes. @returns items it could not read (no id) */
  setSpace(planets: Record<string, unknown>[], nodes: Record<string, unknown>[]): number {
    let skipped = 0;
    for (const p of planets) {
      const id = entityId("planet", p.id ?? p.slug);
      if (!id) {
        skipped++;
        continue;
      }
      const type = str(p.type) ?? "planet";
      const fixed = type === "dao" ? entityId("dao", p.id ?? p.slug)! : id;
      this.planets.set(fixed, { ...(this.planets.get(fixed) ?? {}), id: fixed, name: str(p.name), type, orbits: Array.isArray(p.orbits) ? p.orbits.map(String) : [], status: str(p.status) ?? "unknown" });
      this.raw.set(fixed, p);
    }
    for (const n of nodes) {
      const id = entityId("node", n.id ?? n.node_id);
      if (!id) {
        skipped++;
        continue;
      }
      const prev = this.nodes.get(id);
      const metrics: NodeMetrics = { ...prev?.metrics };
      for (const [k, from] of [["cpu", n.cpu], ["gpu", n.gpu], ["ram", n.ram ?? n.memory], ["net_in", n.net_in], ["net_out", n.net_out]] as const) {
        const v = num(from);
        if (v !== undefined) metrics[k] = v;
      }
      this.nodes.set(id, {
        id, name: str(n.name) ?? prev?.name ?? null, microdao_id: entityId("microdao", n.microdao_id) ?? prev?.microdao_id ?? null,
        status: str(n.status) ?? prev?.status ?? "unknown", metrics, alerts: Array.isArray(n.alerts) ? n.alerts : (prev?.alerts ?? []), updated_at: prev?.updated_at ?? null,
      });
      this.raw.set(id, n);
    }
    this.touch();
    return skipped;
  }

  /** agents-service's list (and its metrics summary, by agent id). @returns items without an id */
  setAgents(items: Record<string, unknown>[], metrics: Map<string, Record<string, unknown>>): number {
    let skipped = 0;
    for (const a of items) {
      const id = entityId("agent", a.id ?? a.agent_id);
      if (!id) {
        skipped++;
        continue;
      }
      const prev = this.agents.get(id);
      const m = metrics.get(id);
      this.agents.set(id, {
        id, name: str(a.name) ?? prev?.name ?? null, kind: str(a.kind ?? a.type) ?? prev?.kind ?? null,
        microdao_id: entityId("microdao", a.microdao_id) ?? prev?.microdao_id ?? null, status: str(a.status ?? m?.status) ?? prev?.status ?? "unknown",
        usage: prev?.usage ?? { llm_calls_24h: 0, tokens_24h: 0 }, updated_at: prev?.updated_at ?? null,
      });
      this.raw.set(id, m ? { ...a, metrics: m } : a);
    }
    this.touch();
    return skipped;
  }

  /** microdao-service's list: the city layer's items. @returns items without an id */
  setMicrodaos(items: Record<string, unknown>[]): number {
    let skipped = 0;
    for (const d of items) {
      const id = entityId("microdao", d.id ?? d.slug);
      if (!id) {
        skipped++;
        continue;
      }
      this.microdaos.set(id, {
        id, slug: str(d.slug), name: str(d.name), status: str(d.status) ?? "unknown", agents: num(d.agents ?? d.agents_count) ?? null, nodes: num(d.nodes ?? d.nodes_count) ?? null,
      });
      this.raw.set(id, d);
    }
    this.touch();
    return skipped;
  }

  /** dao-service's DAOs (planets of the space layer) and proposals summary by DAO id. @returns items without an id */
  setDaos(items: Record<string, unknown>[], proposals: Map<string, Record<string, unknown>>): number {
    let skipped = 0;
    for (const d of items) {
      const id = entityId("dao", d.id ?? d.slug);
      if (!id) {
        skipped++;
        continue;
      }
      const prev = this.planets.get(id);
      this.planets.set(id, {
        id, name: str(d.name) ?? prev?.name ?? null, type: "dao", orbits: Array.isArray(d.orbits) ? d.orbits.map(String) : (prev?.orbits ?? []),
        status: str(d.status) ?? prev?.status ?? "unknown", proposals: proposals.get(id) ?? prev?.proposals ?? null,
      });
      this.raw.set(id, d);
    }
    this.touch();
    return skipped;
  }

  /** usage-engine's 24 h summary per agent (`null`: it is not answering; events count instead). */
  setEngineUsage(byAgent: Map<string, { llm_calls_24h: number; tokens_24h: number }> | null): void {
    this.engineUsage = byAgent;
    this.touch();
  }

  // ---- events ----------------------------------------------------------------------------

  /**
   * Moves the scene by one event (the subject without any prefix; the payload a JSON object;
   * `when` its ISO time, `at` the same in epoch ms). Documented per subject in the README ("Living Map").
   * @returns whether the event named an entity and changed something
   */
  apply(subject: string, payload: Record<string, unknown>, when: string, at = Date.parse(when)): boolean {
    const family = familyOf(subject);
    let changed = false;
    if (family === "node.metrics") {
      const id = entityId("node", payload.node_id ?? payload.id ?? subject.split(".")[2]);
      if (id) {
        const prev = this.nodes.get(id);
        const metrics: NodeMetrics = { ...prev?.metrics };
        for (const [k, from] of [["cpu", payload.cpu], ["gpu", payload.gpu], ["ram", payload.ram ?? payload.memory], ["net_in", payload.net_in], ["net_out", payload.net_out]] as const) {
          const v = num(from);
          if (v !== undefined) metrics[k] = v;
        }
        this.nodes.set(id, {
          id, name: str(payload.name) ?? prev?.name ?? null, microdao_id: entityId("microdao", payload.microdao_id) ?? prev?.microdao_id ?? null,
          status: str(payload.status) ?? (prev && prev.status !== "unknown" ? prev.status : "online"), metrics,
          alerts: Array.isArray(payload.alerts) ? payload.alerts : (prev?.alerts ?? []), updated_at: when,
        });
        changed = true;
      }
    } else if (family === "agent.event") {
      const id = entityId("agent", payload.agent_id ?? payload.id);
      if (id) {
        const prev = this.agents.get(id);
        this.agents.set(id, {
          id, name: str(payload.name) ?? prev?.name ?? null, kind: str(payload.kind) ?? prev?.kind ?? null,
          microdao_id: entityId("microdao", payload.microdao_id) ?? prev?.microdao_id ?? null, status: str(payload.status) ?? prev?.status ?? "unknown",
          usage: prev?.usage ?? { llm_calls_24h: 0, tokens_24h: 0 }, updated_at: when,
        });
        changed = true;
      }
    } else if (family === "usage.llm" || family === "usage.agent") {
      const id = entityId("agent", payload.agent_id);
      if (id) {
        const calls = num(payload.calls) ?? 1;
        const tokens = num(payload.tokens ?? payload.tokens_used ?? payload.total_tokens) ?? 0;
        const buckets = this.usage.get(id) ?? { hours: new Map() };
        const hour = Math.floor(at / 3_600_000);
        const b = buckets.hours.get(hour) ?? [0, 0];
        buckets.hours.set(hour, [b[0] + calls, b[1] + tokens]);
        this.usage.set(id, buckets);
        if (!this.agents.has(id)) {
          this.agents.set(id, { id, name: null, kind: null, microdao_id: null, status: "unknown", usage: { llm_calls_24h: 0, tokens_24h: 0 }, updated_at: when });
        }
        changed = true;
      }
    } else if (family === "dao.event") {
      const id = entityId("dao", payload.dao_id ?? payload.id);
      if (id) {
        const prev = this.planets.get(id);
        this.planets.set(id, {
          id, name: str(payload.name) ?? prev?.name ?? null, type: "dao", orbits: prev?.orbits ?? [], status: str(payload.status) ?? prev?.status ?? "active",
          proposals: (payload.proposals as Record<string, unknown> | undefined) ?? prev?.proposals ?? null,
        });
        changed = true;
      }
    } else if (family === "microdao.event") {
      const id = entityId("microdao", payload.microdao_id ?? payload.id);
      if (id) {
        const prev = this.microdaos.get(id);
        this.microdaos.set(id, {
          id, slug: str(payload.slug) ?? prev?.slug ?? null, name: str(payload.name) ?? prev?.name ?? null, status: str(payload.status) ?? prev?.status ?? "active",
          agents: num(payload.agents) ?? prev?.agents ?? null, nodes: num(payload.nodes) ?? prev?.nodes ?? null,
        });
        changed = true;
      }
    } else if (subject === "city.event.room_message") {
      const roomId = str(payload.room_id);
      if (roomId) {
        const id = `room:${roomId}`;
        const prev = this.channels.get(id);
        this.channels.set(id, { id, slug: prev?.slug ?? roomId.replace(/^room_city_/, ""), name: prev?.name ?? null, online: prev?.online ?? null, messages_last_hour: (prev?.messages_last_hour ?? 0) + 1 });
        this.city.messages_last_hour++;
        changed = true;
      }
    } else if (subject === "messaging.message.created") {
      const id = entityId("channel", payload.channel_id ?? payload.room_id);
      if (id) {
        const prev = this.channels.get(id);
        this.channels.set(id, { id, slug: prev?.slug ?? null, name: str(payload.channel_name) ?? prev?.name ?? null, online: prev?.online ?? null, messages_last_hour: (prev?.messages_last_hour ?? 0) + 1 });
        changed = true;
      }
    }
    if (changed) this.touch();
    return changed;
  }

  /** Records the last event applied (whether or not it named an entity). */
  markApplied(id: string, seq: number, streamSeq: number | null): void {
    this.lastEvent = { id, seq: Math.max(seq, this.lastEvent.seq), streamSeq: streamSeq ?? this.lastEvent.streamSeq };
  }

  // ---- reading ---------------------------------------------------------------------------

  /** The snapshot (seed 004 §4.2 plus `meta.sources`), serialised once per change. */
  snapshotJson(): string {
    if (this.serialised?.version === this.version) return this.serialised.json;
    const json = JSON.stringify(this.snapshot());
    this.serialised = { version: this.version, json };
    return json;
  }

  /** The snapshot as an object. */
  snapshot(): Record<string, unknown> {
    const now = this.now();
    const agents = [...this.agents.values()].map((a) => ({ ...a, usage: this.usageOf(a.id, now) }));
    const activeAgents = agents.filter((a) => a.status === "online" || a.status === "active").length;
    const sources = this.sourceStatuses();
    const troubled = sources.some((s) => s.status === "stale" || s.status === "unavailable");
    const planets = [...this.planets.values()];
    const nodes = [...this.nodes.values()];
    return {
      generated_at: new Date(now).toISOString(),
      layers: {
        city: {
          microdaos_total: this.microdaos.size, active_users: this.city.active_users, active_agents: activeAgents, health: troubled ? "yellow" : "green",
          messages_last_hour: this.city.messages_last_hour, items: [...this.microdaos.values()], rooms: [...this.channels.values()].filter((c) => c.id.startsWith("room:")),
          channels: [...this.channels.values()].filter((c) => c.id.startsWith("channel:")),
        },
        space: {
          planets,
          nodes: nodes.map((n) => ({ id: n.id, name: n.name, cpu: n.metrics.cpu ?? null, gpu: n.metrics.gpu ?? null, memory: n.metrics.ram ?? null, alerts: n.alerts })),
        },
        nodes: { items: nodes },
        agents: { items: agents },
      },
      meta: {
        source_services: [...SOURCE_NAMES],
        sources,
        version: this.version,
        last_event_id: this.lastEvent.id,
      },
    };
  }

  /** Every entity, flat (seed 004 §4.3), optionally of one type. */
  entities(type?: EntityItem["type"]): EntityItem[] {
    const out: EntityItem[] = [CITY_ITEM];
    for (const d of this.microdaos.values()) out.push(microdaoItem(d));
    for (const c of this.channels.values()) out.push(channelItem(c));
    for (const p of this.planets.values()) out.push(planetItem(p));
    for (const n of this.nodes.values()) out.push(nodeItem(n));
    for (const a of this.agents.values()) out.push(agentItem(a));
    return type ? out.filter((e) => e.type === type) : out;
  }

  /** One entity in detail (seed 004 §4.4): its state here and what its source said of it. */
  entity(id: string): { id: string; type: EntityItem["type"]; layer: EntityItem["layer"]; data: Record<string, unknown> } | null {
    let item: EntityItem;
    let state: object;
    const [d, c, p, n, a] = [this.microdaos.get(id), this.channels.get(id), this.planets.get(id), this.nodes.get(id), this.agents.get(id)];
    if (id === CITY_ITEM.id) [item, state] = [CITY_ITEM, { label: CITY_ITEM.label, ...this.city }];
    else if (d) [item, state] = [microdaoItem(d), d];
    else if (c) [item, state] = [channelItem(c), c];
    else if (p) [item, state] = [planetItem(p), p];
    else if (n) [item, state] = [nodeItem(n), n];
    else if (a) [item, state] = [agentItem(a), { ...a, usage: this.usageOf(id, this.now()) }];
    else return null;
    const raw = this.raw.get(id);
    return { id, type: item.type, layer: item.layer, data: { ...state, ...(raw !== undefined ? { source: raw } : {}) } };
  }

  /** The scene's state for a saved snapshot (restored by {@link restore}). */
  dump(): Record<string, unknown> {
    return {
      nodes: [...this.nodes.values()], agents: [...this.agents.values()], microdaos: [...this.microdaos.values()], planets: [...this.planets.values()],
      channels: [...this.channels.values()], usage: [...this.usage].map(([id, b]) => [id, [...b.hours]]), city: this.city, lastEvent: this.lastEvent,
    };
  }

  /** Restores a {@link dump} (warming a starting instance); unknown shapes are ignored. */
  restore(d: Record<string, unknown>): void {
    const list = <T>(v: unknown) => (Array.isArray(v) ? (v as T[]) : []);
    for (const n of list<NodeState>(d.nodes)) if (n?.id) this.nodes.set(n.id, n);
    for (const a of list<AgentState>(d.agents)) if (a?.id) this.agents.set(a.id, a);
    for (const m of list<MicrodaoState>(d.microdaos)) if (m?.id) this.microdaos.set(m.id, m);
    for (const p of list<PlanetState>(d.planets)) if (p?.id) this.planets.set(p.id, p);
    for (const c of list<ChannelState>(d.channels)) if (c?.id) this.channels.set(c.id, c);
    for (const [id, hours] of list<[string, [number, [number, number]][]]>(d.usage)) this.usage.set(id, { hours: new Map(hours) });
    const last = d.lastEvent as Scene["lastEvent"] | undefined;
    if (last && typeof last.seq === "number") this.lastEvent = last;
    this.touch();
  }

  private usageOf(agentId: string, now: number): { llm_calls_24h: number; tokens_24h: number } {
    const engine = this.engineUsage?.get(agentId);
    if (engine) return engine;
    const b = this.usage.get(agentId);
    if (!b) return { llm_calls_24h: 0, tokens_24h: 0 };
    const from = Math.floor(now / 3_600_000) - 23;
    let calls = 0;
    let tokens = 0;
    for (const [hour, [c, t]] of b.hours) {
      if (hour < from) b.hours.delete(hour);
      else {
        calls += c;
        tokens += t;
      }
    }
    return { llm_calls_24h: calls, tokens_24h: tokens };
  }

  private touch(): void {
    this.version++;
  }
}
