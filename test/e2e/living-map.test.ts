/**
 * The Living Map on the compiled binary, with NATS (JetStream), PostgreSQL and two real upstreams
 * started here: the snapshot's `meta.sources` tells the truth about all six; an event published on
 * `node.metrics.x` appears on the stream, in the history (also after a restart) and in the node's
 * metrics; and a binary killed between receiving a batch and acknowledging it loses nothing: the
 * next one gets the batch again and logs each event once.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { connect, type NatsConnection } from "nats";
import postgres from "postgres";
import { binaryToken, compiledBinary, startBinary, stopBinary, type RunningBinary } from "../helpers/binary.ts";
import { TestSocket, waitFor } from "../helpers/city.ts";
import { defaultLivingMapConsumer, defaultLivingMapStream } from "../../src/config.ts";
import { createTestSchema, deleteLivingMapStream, engineUrl, randomSuffix } from "../helpers/engines.ts";

const pg = engineUrl("DATABASE_URL", "living map binary");
const natsUrl = engineUrl("NATS_URL", "living map binary");
const SECRET = "e2e-living-map-secret-0123456789-abcdef";

describe.skipIf(!pg || !natsUrl)("living map on the compiled binary", () => {
  const work = mkdtempSync(path.join(tmpdir(), "dc-e2e-lm-"));
  let nc: NatsConnection;
  const upstreams: ReturnType<typeof Bun.serve>[] = [];
  const runs: RunningBinary[] = [];
  beforeAll(async () => {
    compiledBinary();
    nc = await connect({ servers: natsUrl! });
  }, 120_000);
  afterAll(async () => {
    for (const r of runs) if (r.proc.exitCode === null && !r.proc.killed) await stopBinary(r);
    for (const u of upstreams) u.stop(true);
    await nc.close();
    rmSync(work, { recursive: true, force: true });
  });

  test("meta.sources tells the truth about all six; node.metrics.x reaches the stream, the history (also after a restart) and the snapshot", async () => {
    const db = await createTestSchema(pg!);
    const prefix = `t_${randomSuffix()}`;
    const space = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ planets: [], nodes: [{ id: "x", name: "NODE X", cpu: 0.1 }] }) });
    const usage = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ agents: [{ agent_id: "sofia", llm_calls: 12, tokens: 3400 }] }) });
    upstreams.push(space, usage);
    const env = {
      DATABASE_URL: db.url, NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix, JWT_SECRET: SECRET, DATA_DIR: mkdtempSync(path.join(work, "d-")),
      SPACE_SERVICE_URL: `http://127.0.0.1:${space.port}`, USAGE_ENGINE_URL: `http://127.0.0.1:${usage.port}`,
      // one configured but unreachable, to see it said so
      DAO_SERVICE_URL: "http://127.0.0.1:1", LIVING_MAP_UPSTREAM_TIMEOUT_MS: "500",
    };
    try {
      const run = await startBinary(env, work);
      runs.push(run);
      const token = binaryToken(env, "u_map");
      const get = async (p: string) => (await (await fetch(`${run.url}${p}`, { headers: { authorization: `Bearer ${token}` } })).json()) as any;
      const snap = await waitFor(() => get("/living-map/snapshot"), (s) => s.meta.sources.every((x: any) => x.error !== "not fetched yet" && x.error !== "not read yet"), 10_000);
      expect(Object.fromEntries(snap.meta.sources.map((s: any) => [s.name, s.status]))).toEqual({
        "city-service": "ok", "space-service": "ok", "agents-service": "not_configured", "microdao-service": "not_configured", "dao-service": "unavailable", "usage-engine": "ok",
      });
      expect(snap.meta.sources.find((s: any) => s.name === "dao-service").error).toMatch(/unreachable|refused|timed out/i);

      const stream = await TestSocket.open(`${run.wsUrl}/living-map/stream?token=${token}`);
      await stream.next((f) => f.kind === "snapshot");
      nc.publish(`${prefix}.node.metrics.x`, JSON.stringify({ node_id: "x", cpu: 0.93, gpu: 0.5, ram: 0.4 }));
      // a node only events know of: after a restart the scene must come back from the store
      nc.publish(`${prefix}.node.metrics.y`, JSON.stringify({ node_id: "y", cpu: 0.77 }));
      await nc.flush();
      const ev = await stream.next((f) => f.kind === "event" && f.event_type === "node.metrics.x", 10_000);
      expect(ev.payload).toEqual({ node_id: "x", cpu: 0.93, gpu: 0.5, ram: 0.4 });
      const history = await waitFor(() => get("/living-map/history"), (h) => h.items.some((e: any) => e.id === ev.id), 10_000);
      expect(history.items.find((e: any) => e.id === ev.id)).toMatchObject({ event_type: "node.metrics.x", entity_id: "node:x", source: "jetstream" });
      const next = await get("/living-map/snapshot");
      expect(next.layers.nodes.items.find((n: any) => n.id === "node:x")).toMatchObject({ name: "NODE X", metrics: { cpu: 0.93, gpu: 0.5, ram: 0.4 } });
      stream.close();

      expect((await stopBinary(run)).code).toBe(0);
      const again = await startBinary(env, work);
      runs.push(again);
      const h2 = (await (await fetch(`${again.url}/living-map/history`, { headers: { authorization: `Bearer ${token}` } })).json()) as any;
      expect(h2.items.filter((e: any) => e.id === ev.id).length).toBe(1);
      const warm = (await (await fetch(`${again.url}/living-map/snapshot`, { headers: { authorization: `Bearer ${token}` } })).json()) as any;
      expect(warm.layers.nodes.items.find((n: any) => n.id === "node:y")).toMatchObject({ metrics: { cpu: 0.77 } });
      // (node:x's metrics are whichever came last: the event, or space-service's answer at this start)
      expect((await stopBinary(again)).code).toBe(0);
    } finally {
      await db.drop();
      await deleteLivingMapStream(natsUrl!, prefix);
    }
  }, 60_000);

  test("a binary killed between receiving a batch and acknowledging it loses nothing: the next one logs every event once", async () => {
    const db = await createTestSchema(pg!);
    const prefix = `t_${randomSuffix()}`;
    const env = {
      DATABASE_URL: db.url, NATS_URL: natsUrl!, NATS_SUBJECT_PREFIX: prefix, JWT_SECRET: SECRET, DATA_DIR: mkdtempSync(path.join(work, "d-")),
      LIVING_MAP_ACK_WAIT_MS: "1000",
    };
    const sql = postgres(db.url, { max: 2, onnotice: () => {} });
    try {
      const first = await startBinary(env, work);
      runs.push(first);
      // Hold the log: the binary receives the next batch but cannot write it (so cannot acknowledge it).
      const locked = Promise.withResolvers<void>();
      const release = Promise.withResolvers<void>();
      const holder = sql.begin(async (tx) => {
        await tx`lock table living_map_history in exclusive mode`;
        locked.resolve();
        await release.promise;
      });
      await locked.promise;
      const N = 50;
      for (let i = 0; i < N; i++) nc.publish(`${prefix}.agent.event.status`, JSON.stringify({ agent_id: `a${i}`, status: "online", i }));
      await nc.flush();
      // received: the live side of the map has them all
      const token = binaryToken(env, "u_crash");
      await waitFor(
        async () => (await (await fetch(`${first.url}/living-map/entities?type=agent&limit=1000`, { headers: { authorization: `Bearer ${token}` } })).json()) as any,
        (e) => e.items.length === N,
        10_000,
      );
      first.proc.kill("SIGKILL");
      await first.proc.exited;
      release.resolve();
      await holder;
      expect(Number((await sql`select count(*)::int as n from living_map_history`)[0]!.n)).toBe(0);

      const second = await startBinary(env, work);
      runs.push(second);
      await waitFor(async () => Number((await sql`select count(*)::int as n from living_map_history`)[0]!.n), (n) => n >= N, 15_000);
      // Every message of the stream acknowledged and none waiting or in flight: none can come back
      // as a second delivery (what a sleep past another ack wait used to stand for).
      const jsm = await nc.jetstreamManager();
      await waitFor(
        () => jsm.consumers.info(defaultLivingMapStream(prefix), defaultLivingMapConsumer(prefix)),
        (c) => c.num_pending === 0 && c.num_ack_pending === 0 && c.delivered.stream_seq >= N,
        10_000,
      );
      const rows = await sql<{ i: number; n: number }[]>`select (payload->>'i')::int as i, count(*)::int as n from living_map_history group by 1 order by 1`;
      expect(rows.map((r) => r.i)).toEqual(Array.from({ length: N }, (_, i) => i));
      expect(rows.every((r) => r.n === 1)).toBe(true);
      expect((await stopBinary(second)).code).toBe(0);
    } finally {
      await sql.end();
      await db.drop();
      await deleteLivingMapStream(natsUrl!, prefix);
    }
  }, 60_000);
});
