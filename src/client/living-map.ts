/**
 * Applying Living Map stream events to a snapshot on the client, as immutable updates (seed 004
 * §6.2: "on kind=event update the local state immutably"): only the objects on the changed path
 * are new, so React re-renders what changed.
 */
import type { LivingMapEvent, LivingMapSnapshotData } from "../engine/frames.ts";

type Item = Record<string, unknown> & { id: string };

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string | undefined => (typeof v === "string" && v !== "" ? v : undefined);
const prefixed = (prefix: string, raw: unknown): string | null => {
  const s = typeof raw === "number" ? String(raw) : str(raw);
  if (!s) return null;
  return s.startsWith(`${prefix}:`) ? s : `${prefix}:${s}`;
};

/**
 * The id of the entity an event names, prefixed as the map's ids are (`gpu-1` → `node:gpu-1`),
 * read from the fields the server reads (README "Living Map"); `null` when it names none.
 */
export function eventEntityId(e: LivingMapEvent): string | null {
  const p = e.payload;
  switch (e.event_type.split(".").slice(0, 2).join(".")) {
    case "node.metrics":
      return prefixed("node", p.node_id ?? p.id ?? e.event_type.split(".")[2]);
    case "agent.event":
      return prefixed("agent", p.agent_id ?? p.id);
    case "usage.llm":
    case "usage.agent":
      return prefixed("agent", p.agent_id);
    case "dao.event":
      return prefixed("dao", p.dao_id ?? p.id);
    case "microdao.event":
      return prefixed("microdao", p.microdao_id ?? p.id);
    case "city.event":
      return typeof p.room_id === "string" ? `room:${p.room_id}` : null;
    case "messaging.message":
      return prefixed("channel", p.channel_id ?? p.room_id);
    default:
      return null;
  }
}

/**
 * The snapshot after one event, or `null` when the event names an entity the snapshot does not
 * hold or a family the client does not apply (then read a fresh snapshot: the server's scene is
 * the authority). Families applied here: `node.metrics.*` (metrics, status, alerts) and
 * `agent.event.*` (status, name) on entities already on the map.
 */
export function applyLivingMapEvent(s: LivingMapSnapshotData, e: LivingMapEvent): LivingMapSnapshotData | null {
  const p = e.payload;
  const family = e.event_type.split(".").slice(0, 2).join(".");
  const meta = { ...s.meta, last_event_id: e.id };
  const id = eventEntityId(e);
  if (family === "node.metrics") {
    const items = s.layers.nodes.items as Item[];
    const i = items.findIndex((n) => n.id === id);
    if (i < 0) return null;
    const prev = items[i]!;
    const metrics = { ...(prev.metrics as Record<string, number>) };
    for (const [k, v] of [["cpu", p.cpu], ["gpu", p.gpu], ["ram", p.ram ?? p.memory], ["net_in", p.net_in], ["net_out", p.net_out]] as const) {
      const n = num(v);
      if (n !== undefined) metrics[k] = n;
    }
    const node = { ...prev, metrics, status: str(p.status) ?? prev.status, alerts: Array.isArray(p.alerts) ? p.alerts : prev.alerts, updated_at: e.timestamp };
    const nodes = items.slice();
    nodes[i] = node;
    const spaceNodes = (s.layers.space.nodes as Item[]).map((n) => (n.id === id ? { ...n, cpu: metrics.cpu ?? null, gpu: metrics.gpu ?? null, memory: metrics.ram ?? null, alerts: node.alerts } : n));
    return { ...s, meta, layers: { ...s.layers, nodes: { ...s.layers.nodes, items: nodes }, space: { ...s.layers.space, nodes: spaceNodes } } };
  }
  if (family === "agent.event") {
    const items = s.layers.agents.items as Item[];
    const i = items.findIndex((a) => a.id === id);
    if (i < 0) return null;
    const prev = items[i]!;
    const agents = items.slice();
    agents[i] = { ...prev, status: str(p.status) ?? prev.status, name: str(p.name) ?? prev.name, updated_at: e.timestamp };
    return { ...s, meta, layers: { ...s.layers, agents: { ...s.layers.agents, items: agents } } };
  }
  return null;
}
