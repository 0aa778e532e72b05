/**
 * The living-map simulator (`daarion-city simulate`, `bun run simulate`): publishes realistic
 * traffic on the eight subjects of seed 004 §3.3, for demos and load. A small world (nodes, agents,
 * microDAOs, DAOs, channels) changes at a chosen rate: node metrics drift, agents change status and
 * spend tokens, DAOs open proposals, microDAOs grow, channels and city rooms get messages.
 * Nothing it sends is read back or stored by it: it is a publisher like any other service.
 */
import { connect, type NatsConnection } from "nats";

export interface SimulatorOptions {
  /** NATS URL(s). */
  url: string;
  /** NATS_SUBJECT_PREFIX of the city it feeds. */
  prefix: string;
  /** Events per second. */
  rate: number;
  /** Stop after this long, ms (`null`: until stopped). */
  durationMs: number | null;
  nodes: number;
  agents: number;
  /** Seeds the world (same seed, same world and same event sequence). */
  seed?: number;
  /** Called after each second with the events sent so far. */
  onProgress?: (sent: number) => void;
}

/** A small deterministic PRNG (mulberry32), so a seed replays the same traffic. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One event: a subject (without prefix) and its payload. */
export interface SimulatedEvent {
  subject: string;
  payload: Record<string, unknown>;
}

/** The world and its next event; exposed for tests. */
export function world(o: { nodes: number; agents: number; seed?: number }): () => SimulatedEvent {
  const r = rng(o.seed ?? Date.now());
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
  const microdaos = Array.from({ length: Math.max(1, Math.ceil(o.agents / 5)) }, (_, i) => ({ id: `microdao:${i + 1}`, name: `MicroDAO ${i + 1}`, agents: 0, nodes: 0 }));
  const nodes = Array.from({ length: o.nodes }, (_, i) => ({
    id: `node:gpu-${i + 1}`, microdao: pick(microdaos).id, cpu: r() * 0.6, gpu: r() * 0.8, ram: 0.3 + r() * 0.4, net_in: 0, net_out: 0,
  }));
  const statuses = ["online", "online", "online", "busy", "idle", "offline"];
  const agents = Array.from({ length: o.agents }, (_, i) => ({ id: `agent:sim-${i + 1}`, name: `Agent ${i + 1}`, microdao: pick(microdaos).id, status: "online" }));
  const daos = Array.from({ length: Math.max(1, Math.ceil(o.agents / 10)) }, (_, i) => ({ id: `dao:sim-${i + 1}`, name: `DAO ${i + 1}`, proposals: 0 }));
  const channels = ["channel:general", "channel:builders", "channel:science"];
  const rooms = ["room_city_general", "room_city_builders", "room_city_science", "room_city_energy"];
  const drift = (v: number) => Math.min(1, Math.max(0, v + (r() - 0.5) * 0.1));
  const round = (v: number) => Math.round(v * 1000) / 1000;
  let n = 0;
  return () => {
    n++;
    const now = new Date().toISOString();
    const x = r();
    if (x < 0.45 && nodes.length) {
      const node = pick(nodes);
      node.cpu = drift(node.cpu);
      node.gpu = drift(node.gpu);
      node.ram = drift(node.ram);
      node.net_in += Math.floor(r() * 5000);
      node.net_out += Math.floor(r() * 4000);
      return {
        subject: `node.metrics.${node.id.slice(5)}`,
        payload: { node_id: node.id, microdao_id: node.microdao, cpu: round(node.cpu), gpu: round(node.gpu), ram: round(node.ram), net_in: node.net_in, net_out: node.net_out, timestamp: now },
      };
    }
    if (x < 0.6 && agents.length) {
      const a = pick(agents);
      a.status = pick(statuses);
      return { subject: "agent.event.status", payload: { agent_id: a.id, name: a.name, microdao_id: a.microdao, status: a.status, timestamp: now } };
    }
    if (x < 0.78 && agents.length) {
      const a = pick(agents);
      const tokens = 50 + Math.floor(r() * 2000);
      return r() < 0.7
        ? { subject: "usage.llm.call", payload: { agent_id: a.id, model: pick(["dagi-small", "dagi-large"]), tokens, latency_ms: Math.floor(r() * 900), timestamp: now } }
        : { subject: "usage.agent.invoke", payload: { agent_id: a.id, tool: pick(["search", "memory", "router"]), calls: 1, timestamp: now } };
    }
    if (x < 0.84) {
      const d = pick(daos);
      d.proposals++;
      return { subject: "dao.event.proposal", payload: { dao_id: d.id, name: d.name, status: "active", proposals: { open: d.proposals }, timestamp: now } };
    }
    if (x < 0.88) {
      const m = pick(microdaos);
      m.agents = agents.filter((a) => a.microdao === m.id).length;
      m.nodes = nodes.filter((nd) => nd.microdao === m.id).length;
      return { subject: "microdao.event.updated", payload: { microdao_id: m.id, name: m.name, status: "active", agents: m.agents, nodes: m.nodes, timestamp: now } };
    }
    if (x < 0.95) {
      return { subject: "messaging.message.created", payload: { channel_id: pick(channels), message_id: `msg-${n}`, author_agent_id: pick(agents)?.id ?? null, timestamp: now } };
    }
    return { subject: "city.event.activity", payload: { room_id: pick(rooms), kind: "visit", count: 1 + Math.floor(r() * 3), timestamp: now } };
  };
}

/**
 * Runs the simulator until `durationMs` passes (or forever).
 * @returns events sent
 * @throws Error when NATS cannot be reached
 */
export async function simulate(o: SimulatorOptions): Promise<number> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: o.url.split(",").map((s) => s.trim()), name: "daarion-city-simulator" });
  } catch (err) {
    throw new Error(`NATS_URL: cannot connect to ${o.url}: ${(err as Error).message}`);
  }
  const next = world(o);
  const prefix = o.prefix ? `${o.prefix}.` : "";
  const t0 = performance.now();
  let sent = 0;
  let lastReport = t0;
  try {
    for (;;) {
      const elapsed = performance.now() - t0;
      if (o.durationMs !== null && elapsed >= o.durationMs) break;
      const due = Math.floor((o.rate * elapsed) / 1000);
      for (; sent < due; sent++) {
        const e = next();
        nc.publish(prefix + e.subject, JSON.stringify(e.payload));
      }
      if (performance.now() - lastReport >= 1000) {
        lastReport = performance.now();
        o.onProgress?.(sent);
      }
      await Bun.sleep(5);
    }
    await nc.flush();
  } finally {
    await nc.drain();
  }
  return sent;
}
