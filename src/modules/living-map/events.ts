/**
 * Living-map events as they arrive on NATS (seed 004 §3.3): the eight subjects, reading a payload
 * (a JSON object, at most a size), the entity it names, and its id.
 *
 * Ids are UUIDs (seed 004 §5 `id UUID`). One that came through JetStream is derived from the
 * stream and its sequence there, so every instance that reads it names it the same; one that came
 * over core NATS is derived from its subject and payload (instances that all receive it store it
 * once); one made in this process without NATS is random.
 */
import type { LivingMapEventWrite, LivingMapSource } from "../../storage/store.ts";
import { entityId } from "./scene.ts";

/** The subjects the living map listens on (seed 004 §3.3). */
export const LIVING_MAP_SUBJECTS = [
  "city.event.*", "dao.event.*", "microdao.event.*", "node.metrics.*", "agent.event.*", "usage.llm.*", "usage.agent.*", "messaging.message.created",
] as const;

/** Why a payload was refused (counted in /metrics, logged once per subject per minute). */
export type BadEvent = "oversize" | "not_json" | "not_an_object";

/** A payload read: the event to store, or why not. */
export type ReadEvent = { ok: true; event: LivingMapEventWrite } | { ok: false; reason: BadEvent };

/** The family of a subject for metrics: its first two tokens (`node.metrics`). */
export const familyOf = (subject: string): string => subject.split(".").slice(0, 2).join(".");

/** The entity an event names (type and prefixed id), or nulls. */
export function entityOf(subject: string, p: Record<string, unknown>): { entity_type: string | null; entity_id: string | null } {
  const family = familyOf(subject);
  const pick = (type: string, prefix: string, raw: unknown) => {
    const id = entityId(prefix, raw);
    return id ? { entity_type: type, entity_id: id } : { entity_type: null, entity_id: null };
  };
  switch (family) {
    case "node.metrics":
      return pick("node", "node", p.node_id ?? p.id ?? subject.split(".")[2]);
    case "agent.event":
    case "usage.llm":
    case "usage.agent":
      return pick("agent", "agent", p.agent_id ?? (family === "agent.event" ? p.id : undefined));
    case "dao.event":
      return pick("dao", "dao", p.dao_id ?? p.id);
    case "microdao.event":
      return pick("microdao", "microdao", p.microdao_id ?? p.id);
    case "city.event":
      return typeof p.room_id === "string" ? { entity_type: "channel", entity_id: `room:${p.room_id}` } : { entity_type: null, entity_id: null };
    case "messaging.message":
      return pick("channel", "channel", p.channel_id ?? p.room_id);
    default:
      return { entity_type: null, entity_id: null };
  }
}

/** A UUID (version 8: "custom") from a SHA-256 of `text`: the same text, the same id, on every instance. */
export function uuidFrom(text: string): string {
  const h = new Bun.CryptoHasher("sha256").update(text).digest();
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString("hex");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/**
 * Reads one payload.
 * @param subject without the configured prefix
 * @param at when it was published (JetStream) or received, epoch ms
 * @param origin where it came from; a JetStream one with the stream name and its sequence
 */
export function readEvent(
  subject: string,
  payload: string,
  at: number,
  maxBytes: number,
  origin: { source: "jetstream"; stream: string; seq: number } | { source: Exclude<LivingMapSource, "jetstream"> },
): ReadEvent {
  if (payload.length > maxBytes || Buffer.byteLength(payload, "utf8") > maxBytes) return { ok: false, reason: "oversize" };
  let v: unknown;
  try {
    v = JSON.parse(payload);
  } catch {
    return { ok: false, reason: "not_json" };
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return { ok: false, reason: "not_an_object" };
  const p = v as Record<string, unknown>;
  const id =
    origin.source === "jetstream" ? uuidFrom(`jetstream:${origin.stream}:${origin.seq}`) : origin.source === "nats" ? uuidFrom(`nats:${subject}\n${payload}`) : crypto.randomUUID();
  return {
    ok: true,
    event: {
      id, timestamp: new Date(at).toISOString(), event_type: subject, payload: p, source: origin.source, ...entityOf(subject, p),
      stream_seq: origin.source === "jetstream" ? origin.seq : null,
    },
  };
}

/** `{ "kind": "event", id, event_type, timestamp, payload }` (seed 004 §4.6), serialised once. */
export function encodeStreamEvent(e: { id: string; event_type: string; timestamp: string; payload: Record<string, unknown> }): string {
  return JSON.stringify({ kind: "event", id: e.id, event_type: e.event_type, timestamp: e.timestamp, payload: e.payload });
}
