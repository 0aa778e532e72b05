/**
 * The Living Map fed by real NATS: with JetStream (a stream and a durable consumer per test
 * prefix, removed afterwards) and with core subscriptions. Events on the eight subjects reach the
 * history, the stream and the scene; malformed and oversize payloads are counted and never stop
 * the consumer; events published while the instance is stopped are there after it starts again;
 * two instances on core NATS store each event once.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type NatsConnection } from "nats";
import { MemoryBroker } from "../../src/engine/broker/memory.ts";
import { createTestSchema, engineUrl, randomSuffix } from "../helpers/engines.ts";
import { startTestCity, testConfig, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";

const natsUrl = engineUrl("NATS_URL", "living map on NATS");
const databaseUrl = engineUrl("DATABASE_URL", "living map on NATS, on PostgreSQL");

describe.skipIf(!natsUrl)("living map on NATS", () => {
  let nc: NatsConnection;
  beforeAll(async () => {
    nc = await connect({ servers: natsUrl! });
  });
  afterAll(async () => {
    await nc.close();
  });

  const publish = async (prefix: string, subject: string, payload: unknown) => {
    nc.publish(`${prefix}.${subject}`, typeof payload === "string" ? payload : JSON.stringify(payload));
    await nc.flush();
  };
  const history = async (c: TestCity, token: string, limit = 200) => ((await (await c.http(`/living-map/history?limit=${limit}`, { token })).json()) as any).items as any[];

  test("JetStream: every subject reaches the history, the stream and the scene; bad payloads are counted and skipped", async () => {
    const prefix = `t_${randomSuffix()}`;
    const city = await startTestCity({ NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix, LIVING_MAP_MAX_EVENT_BYTES: "2048" });
    try {
      expect(city.livingMap.intake).toBe("jetstream");
      const token = await city.token("u_js");
      const stream = await TestSocket.open(city.wsUrl(`/living-map/stream?token=${token}`));
      await stream.next((f) => f.kind === "snapshot");
      const events: [string, Record<string, unknown>][] = [
        ["node.metrics.gpu-9", { node_id: "gpu-9", cpu: 0.5, gpu: 0.9, ram: 0.25, net_in: 10, net_out: 20 }],
        ["agent.event.status", { agent_id: "sofia", status: "busy", name: "Sofia" }],
        ["usage.llm.call", { agent_id: "sofia", tokens: 1200 }],
        ["usage.agent.invoke", { agent_id: "sofia", calls: 2 }],
        ["dao.event.proposal", { dao_id: "core", name: "Core DAO", status: "voting" }],
        ["microdao.event.created", { microdao_id: "7", name: "DAARION City", agents: 9, nodes: 3 }],
        ["messaging.message.created", { channel_id: "lobby", message_id: "m1" }],
        ["city.event.visit", { room_id: "room_city_general" }],
      ];
      await publish(prefix, "node.metrics.gpu-9", "{not json");
      await publish(prefix, "agent.event.status", JSON.stringify([1, 2, 3]));
      await publish(prefix, "dao.event.big", JSON.stringify({ dao_id: "x", pad: "x".repeat(5000) }));
      for (const [subject, payload] of events) await publish(prefix, subject, payload);
      // the stream: in order, after the refused ones
      await stream.until(() => stream.frames.filter((f) => f.kind === "event").length >= events.length, 10_000);
      expect(stream.frames.filter((f) => f.kind === "event").map((f) => f.event_type)).toEqual(events.map(([s]) => s));
      // the history: each once, with its entity
      const stored = await waitFor(() => history(city, token), (items) => items.length >= events.length, 10_000);
      expect(stored.length).toBe(events.length);
      expect(stored.map((e) => [e.event_type, e.entity_id, e.source]).reverse()).toEqual([
        ["node.metrics.gpu-9", "node:gpu-9", "jetstream"], ["agent.event.status", "agent:sofia", "jetstream"], ["usage.llm.call", "agent:sofia", "jetstream"],
        ["usage.agent.invoke", "agent:sofia", "jetstream"], ["dao.event.proposal", "dao:core", "jetstream"], ["microdao.event.created", "microdao:7", "jetstream"],
        ["messaging.message.created", "channel:lobby", "jetstream"], ["city.event.visit", "room:room_city_general", "jetstream"],
      ]);
      expect(new Set(stored.map((e) => e.id))).toEqual(new Set(stream.frames.filter((f) => f.kind === "event").map((f) => f.id)));
      // the scene
      const snap = (await (await city.http("/living-map/snapshot", { token })).json()) as any;
      expect(snap.layers.nodes.items.find((n: any) => n.id === "node:gpu-9")).toMatchObject({ status: "online", metrics: { cpu: 0.5, gpu: 0.9, ram: 0.25, net_in: 10, net_out: 20 } });
      expect(snap.layers.agents.items.find((a: any) => a.id === "agent:sofia")).toMatchObject({ name: "Sofia", status: "busy", usage: { llm_calls_24h: 3, tokens_24h: 1200 } });
      expect(snap.layers.space.planets.find((p: any) => p.id === "dao:core")).toMatchObject({ type: "dao", status: "voting" });
      expect(snap.layers.city.items.find((m: any) => m.id === "microdao:7")).toMatchObject({ name: "DAARION City", agents: 9, nodes: 3 });
      expect(snap.layers.city.channels.find((c: any) => c.id === "channel:lobby").messages_last_hour).toBe(1);
      // the refused ones, counted once each (by the reader that moves the scene) by family and reason
      const metrics = await (await city.http("/metrics")).text();
      for (const [family, reason] of [["node.metrics", "not_json"], ["agent.event", "not_an_object"], ["dao.event", "oversize"]]) {
        expect(metrics).toContain(`daarion_city_living_map_bad_events_total{family="${family}",reason="${reason}"} 1`);
      }
    } finally {
      await city.dispose();
    }
  }, 30_000);

  test("JetStream: events published while the instance is stopped are in its history and scene after it starts again", async () => {
    const prefix = `t_${randomSuffix()}`;
    const { config, cleanup } = testConfig({ NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix });
    const first = await startTestCity({}, { config });
    const token = await first.token("u_restart");
    await publish(prefix, "node.metrics.a", { node_id: "a", cpu: 0.1 });
    await waitFor(() => history(first, token), (items) => items.length === 1, 10_000);
    await first.stop();
    // nobody is reading now
    await publish(prefix, "node.metrics.a", { node_id: "a", cpu: 0.9 });
    await publish(prefix, "agent.event.status", { agent_id: "night-owl", status: "online" });
    const second = await startTestCity({}, { config });
    try {
      const items = await waitFor(() => history(second, token), (i) => i.length === 3, 10_000);
      expect(items.map((e) => e.event_type)).toEqual(["agent.event.status", "node.metrics.a", "node.metrics.a"]);
      const snap = await waitFor(
        async () => (await (await second.http("/living-map/snapshot", { token })).json()) as any,
        // both backlog events applied (the scene may apply the second a moment after the first)
        (s) => s.layers.nodes.items[0]?.metrics.cpu === 0.9 && s.layers.agents.items.length > 0,
        10_000,
      );
      expect(snap.layers.nodes.items.map((n: any) => n.id)).toEqual(["node:a"]);
      expect(snap.layers.agents.items.map((a: any) => a.id)).toEqual(["agent:night-owl"]);
    } finally {
      await second.dispose();
      cleanup();
    }
  }, 30_000);

  test("JetStream: a backlog waiting when a city first starts reaches its scene, not only its history", async () => {
    const prefix = `t_${randomSuffix()}`;
    const { config, cleanup } = testConfig({ NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix });
    // the first start makes the stream and the durable consumer; nothing happened yet
    await (await startTestCity({}, { config })).stop();
    await publish(prefix, "node.metrics.early", { node_id: "early", cpu: 0.42 });
    const city = await startTestCity({}, { config });
    try {
      const token = await city.token("u_backlog");
      await waitFor(() => history(city, token), (i) => i.length === 1, 10_000);
      const snap = await waitFor(
        async () => (await (await city.http("/living-map/snapshot", { token })).json()) as any,
        (s) => s.layers.nodes.items.length > 0,
        10_000,
      );
      expect(snap.layers.nodes.items.map((n: any) => [n.id, n.metrics.cpu])).toEqual([["node:early", 0.42]]);
    } finally {
      await city.dispose();
      cleanup();
    }
  }, 30_000);

  test.skipIf(!databaseUrl)("JetStream on PostgreSQL: an event the store refuses (\\u0000 in jsonb) is counted and left out; the rest of its batch is stored and the consumer goes on", async () => {
    const prefix = `t_${randomSuffix()}`;
    const db = await createTestSchema(databaseUrl!);
    const city = await startTestCity({ NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix, DATABASE_URL: db.url });
    try {
      const token = await city.token("u_nul");
      // one batch: good, refused (valid JSON, but jsonb has no NUL), good
      nc.publish(`${prefix}.node.metrics.a`, JSON.stringify({ node_id: "a", cpu: 0.1 }));
      nc.publish(`${prefix}.node.metrics.b`, '{"node_id":"b","note":"nul \\u0000 here"}');
      nc.publish(`${prefix}.node.metrics.c`, JSON.stringify({ node_id: "c", cpu: 0.3 }));
      await nc.flush();
      const items = await waitFor(() => history(city, token), (i) => i.length >= 2, 10_000);
      expect(items.map((e) => e.entity_id)).toEqual(["node:c", "node:a"]);
      const metrics = await waitFor(
        async () => (await city.http("/metrics")).text(),
        (m) => m.includes('daarion_city_living_map_bad_events_total{family="node.metrics",reason="unstorable"} 1'),
        10_000,
      );
      expect(metrics).toContain("daarion_city_living_map_events_stored_total 2");
      // left out of the history only: the scene has it
      const snap = (await (await city.http("/living-map/snapshot", { token })).json()) as any;
      expect(snap.layers.nodes.items.map((n: any) => n.id).sort()).toEqual(["node:a", "node:b", "node:c"]);
      // the consumer goes on: the next event is stored too
      await publish(prefix, "node.metrics.d", { node_id: "d" });
      expect((await waitFor(() => history(city, token), (i) => i.length >= 3, 10_000)).map((e) => e.entity_id)).toEqual(["node:d", "node:c", "node:a"]);
    } finally {
      await city.dispose();
      await db.drop();
    }
  }, 30_000);

  test("core NATS (LIVING_MAP_JETSTREAM=off): two instances both stream an event, and the history has it once", async () => {
    const prefix = `t_${randomSuffix()}`;
    const { config, cleanup } = testConfig({ NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix, LIVING_MAP_JETSTREAM: "off" });
    const a = await startTestCity({}, { config });
    const b = await startTestCity({}, { config: { ...config } });
    try {
      expect([a.livingMap.intake, b.livingMap.intake]).toEqual(["nats", "nats"]);
      const token = await a.token("u_core");
      const sa = await TestSocket.open(a.wsUrl(`/living-map/stream?token=${token}`));
      const sb = await TestSocket.open(b.wsUrl(`/living-map/stream?token=${token}`));
      await sa.next((f) => f.kind === "snapshot");
      await sb.next((f) => f.kind === "snapshot");
      await a.broker.flush();
      await b.broker.flush();
      await publish(prefix, "agent.event.status", { agent_id: "twin", status: "online" });
      const [ea, eb] = [await sa.next((f) => f.kind === "event"), await sb.next((f) => f.kind === "event")];
      expect(ea.id).toBe(eb.id);
      const items = await waitFor(() => history(a, token), (i) => i.length >= 1, 5000);
      // Each instance queued the event for the log when it sent it to its socket: both have written it now.
      await Promise.all([a.livingMap.flushHistory(), b.livingMap.flushHistory()]);
      expect((await history(a, token)).filter((e) => e.payload.agent_id === "twin").length).toBe(1);
      expect(items[0]).toMatchObject({ id: ea.id, source: "nats" });
      sa.close();
      sb.close();
    } finally {
      await a.dispose();
      await b.dispose();
      cleanup();
    }
  }, 30_000);

  test("without NATS the city's own events still reach the map (the in-process bus)", async () => {
    const city = await startTestCity({ CITY_WRITE_RATE_PER_SECOND: "0" }, { broker: new MemoryBroker() });
    try {
      expect(city.livingMap.intake).toBe("local");
      const token = await city.token("u_local");
      await city.http("/city/rooms/room_city_general/messages", { method: "POST", token, json: { body: "local" } });
      const items = await waitFor(() => history(city, token), (i) => i.length === 1, 5000);
      expect(items[0]).toMatchObject({ event_type: "city.event.room_message", source: "local" });
    } finally {
      await city.dispose();
    }
  });
});
