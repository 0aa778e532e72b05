/**
 * Living-map events as they arrive on NATS (seed 004 §3.3): the eight subjects, reading a payload
 * (a JSON object, at most a size), the entity it names, and its id.
 *
 * Ids are UUIDs (seed 004 §5 `id UUID`). One that came through JetStream is derived from the
 * stream and its sequence there (a hash of the stream's name, then the sequence in the last 12 hex
 * digits), so every instance that reads it names it the same; one that came over core NATS is
 * derived from its subject and payload (instances that all receive it store it once); one made in
 * this process without NATS is random.
 */
import type { LivingMapEventWrite, LivingMapSource } from "../../storage/store.ts";
import { entityId, familyOf } from "./scene.ts";

/** The subjects the living map listens on (seed 004 §3.3). */
export const LIVING_MAP_SUBJECTS = [
  "city.event.*", "dao.event.*", "microdao.event.*", "node.metrics.*", "agent.event.*", "usage.llm.*", "usage.agent.*", "messaging.message.created",
] as const;

/** Why a payload was refused (counted in /metrics, logged once per subject per minute). */
export type BadEvent = "oversize" | "not_json" | "not_an_object" | "unstorable";

/** A payload read: the event to store, or why not. */
export type ReadEvent = { ok: true; event: LivingMapEventWrite } | { ok: false; reason: BadEvent };

export { familyOf };

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

const streamHashes = new Map<string, string>();

/**
 * The id of JetStream message `seq` of `stream`: the first 20 hex digits from a hash of the stream's
 * name (computed once per stream), the last 12 the sequence (up to 2^48).
 */
export function streamEventId(stream: string, seq: number): string {
  let h = streamHashes.get(stream);
  if (h === undefined) {
    h = uuidFrom(`jetstream:${stream}`).slice(0, 23);
    streamHashes.set(stream, h);
  }
  return `${h}-${seq.toString(16).padStart(12, "0")}`;
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
  // A UTF-16 code unit is at most 3 UTF-8 bytes: most payloads need no byte count.
  if (payload.length > maxBytes || (payload.length * 3 > maxBytes && Buffer.byteLength(payload, "utf8") > maxBytes)) return { ok: false, reason: "oversize" };
  let v: unknown;
  try {
    v = JSON.parse(payload);
  } catch {
    return { ok: false, reason: "not_json" };
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return { ok: false, reason: "not_an_object" };
  const p = v as Record<string, unknown>;
  const timestamp = new Date(at).toISOString();
  const id = origin.source === "jetstream" ? streamEventId(origin.stream, origin.seq) : origin.source === "nats" ? uuidFrom(`nats:${subject}\n${payload}`) : crypto.randomUUID();
  const { entity_type, entity_id } = entityOf(subject, p);
  return {
    ok: true,
    event: {
      id, timestamp, event_type: subject, payload: p, payloadJson: payload, source: origin.source, entity_id, entity_type,
      stream_seq: origin.source === "jetstream" ? origin.seq : null,
    },
  };
}

/**
 * `{ "kind": "event", id, event_type, timestamp, payload }` (seed 004 §4.6), serialised once; the
 * payload's own JSON text when the event carries it (as it came off NATS).
 */
export function encodeStreamEvent(e: { id: string; event_type: string; timestamp: string; payload: Record<string, unknown>; payloadJson?: string }): string {
  // id (a UUID) and timestamp (ISO) never need escaping
  return `{"kind":"event","id":"${e.id}","event_type":${JSON.stringify(e.event_type)},"timestamp":"${e.timestamp}","payload":${e.payloadJson ?? JSON.stringify(e.payload)}}`;
}
