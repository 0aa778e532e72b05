/**
 * The AsyncAPI 3.0 document of the sockets (`GET /asyncapi.json`), generated from
 * {@link SOCKETS} in `frames.ts`: the same schemas the encoders are tested against, so the document
 * cannot drift from the frames. Operations are from the server's side: `send` is a frame the
 * server sends, `receive` one it accepts.
 */
import type { TSchema } from "@sinclair/typebox";
import { SOCKETS } from "./frames.ts";

/** A TypeBox schema as plain JSON Schema (TypeBox's symbol keys dropped). */
const plain = (s: TSchema): Record<string, unknown> => JSON.parse(JSON.stringify(s));

/**
 * Builds the document.
 * @param version the server's version (`info.version`)
 * @returns an AsyncAPI 3.0.0 object: one channel per socket route, one message per frame kind
 */
export function asyncApiDocument(version: string): Record<string, unknown> {
  const channels: Record<string, unknown> = {};
  const operations: Record<string, unknown> = {};
  const messages: Record<string, unknown> = {};
  for (const [name, ch] of Object.entries(SOCKETS)) {
    const ref = (id: string) => ({ $ref: `#/channels/${name}/messages/${id}` });
    const own: Record<string, unknown> = {};
    const add = (direction: "accepts" | "sends") => {
      const ids: string[] = [];
      for (const [frame, schema] of Object.entries(ch[direction])) {
        const id = `${direction === "accepts" ? "in" : "out"}.${frame}`;
        const title = (schema as { title?: string }).title ?? frame;
        messages[`${name}.${id}`] = { name: title, title, contentType: "application/json", payload: plain(schema) };
        own[id] = { $ref: `#/components/messages/${name}.${id}` };
        ids.push(id);
      }
      return ids;
    };
    const inIds = add("accepts");
    const outIds = add("sends");
    const params = [...ch.address.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
    channels[name] = {
      address: ch.address,
      description: `${ch.description}\n\nQuery: ${Object.entries(ch.query).map(([k, v]) => `\`${k}\`: ${v}`).join("; ")}.`,
      ...(params.length ? { parameters: Object.fromEntries(params.map((p) => [p, { description: p }])) } : {}),
      messages: own,
    };
    operations[`${name}.receive`] = { action: "receive", channel: { $ref: `#/channels/${name}` }, summary: "frames the client sends", messages: inIds.map(ref) };
    operations[`${name}.send`] = { action: "send", channel: { $ref: `#/channels/${name}` }, summary: "frames the server sends", messages: outIds.map(ref) };
  }
  return {
    asyncapi: "3.0.0",
    info: { title: "DAARION City realtime backend: sockets", version, description: "Every WebSocket route and every frame in and out. HTTP routes: /swagger." },
    defaultContentType: "application/json",
    servers: { city: { host: "localhost:7001", protocol: "ws", description: "the server this document was read from (use wss behind TLS)" } },
    channels,
    operations,
    components: { messages },
  };
}
