/**
 * The Living Map on the compiled binary, three measurements in one run (issue "Living Map"):
 *
 * 1. **Snapshot under load**: `GET /living-map/snapshot` one request after the other (keep-alive),
 *    on a scene of 200 nodes, 1,000 agents, 200 microDAOs and 100 DAOs, first idle, then while
 *    1,000 events/s flow in over NATS (the simulator's mix). Seed 004 measured 200–500 ms.
 * 2. **Events into history**: with JetStream, N events published while the binary is down (a
 *    backlog), then the binary started and timed until `living_map_history` holds them all; then
 *    N more published as fast as JetStream takes them while it runs (live). On PostgreSQL and on
 *    SQLite; afterwards the store is read directly: every stream sequence exactly once (lost,
 *    duplicated).
 * 3. **Stream fan-out**: 1,000 sockets on `/living-map/stream`, events published on NATS at a
 *    fixed rate with their publication time in the payload; latency publication → receipt on
 *    every socket. Against the thinnest Bun bridge (`peers/bun-raw-nats.ts`: a core NATS
 *    subscription on the main thread, one Bun topic), in the same run, interleaved. The project
 *    runs twice: with JetStream (the default: ordered consumer in the bus worker) and with
 *    LIVING_MAP_JETSTREAM=off (core subscriptions in the bus worker), to show what the stream hop costs.
 *
 *   bun run bench:living-map           needs DATABASE_URL and NATS_URL (JetStream); writes results/ and README
 *   bun run bench:living-map --quick   shorter, one rep, results/scratch/ only
 */
import { Database } from "bun:sqlite";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { connect, type NatsConnection } from "nats";
import postgres from "postgres";
import { signToken } from "../src/auth/tokens.ts";
import { world } from "../src/simulate.ts";
import { Histogram, merge, quantileMs, type HistogramData } from "./load/hist.ts";
import type { MapCommand, MapReport } from "./load/map-client.ts";
import { ClientProc, drain } from "./load/proc.ts";
import { BENCH_SECRET, buildProject, cpuSeconds, createBenchSchema, deleteLivingMapStream, projectBinary, ROOT, rssBytes, spawnListening, threadCpu, type ListeningProcess } from "./servers.ts";
import { writeSection } from "./render.ts";

const quick = process.argv.includes("--quick");
const NATS_URL = process.env.NATS_URL!;
const now = () => performance.timeOrigin + performance.now();
const r2 = (x: number | null) => (x === null ? null : Math.round(x * 100) / 100);

// ---- processes -----------------------------------------------------------------------------

type Proc = ListeningProcess;
const spawn = (cmd: string[], env: Record<string, string>, name: string) => spawnListening(cmd, env, name, 15_000);

/** One city: a prefix on NATS (its own stream and consumer), a data dir, and PostgreSQL or not. */
interface City {
  prefix: string;
  dataDir: string;
  databaseUrl: string | null;
  env(extra?: Record<string, string>): Record<string, string>;
  start(extra?: Record<string, string>): Promise<Proc>;
  dispose(): Promise<void>;
}

async function makeCity(store: "postgres" | "sqlite"): Promise<City> {
  const prefix = `lmbench_${Math.random().toString(36).slice(2, 8)}`;
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "dc-bench-lm-"));
  const db = store === "postgres" ? await createBenchSchema() : null;
  const env = (extra: Record<string, string> = {}) => ({
    PORT: "0", HOST: "127.0.0.1", DATA_DIR: dataDir, JWT_SECRET: BENCH_SECRET, LOG_LEVEL: "info", NATS_URL, NATS_SUBJECT_PREFIX: prefix,
    LIVING_MAP_SOCKETS_PER_USER: "5", LIVING_MAP_SNAPSHOT_INTERVAL_MS: "0", ...(db ? { DATABASE_URL: db.url } : {}), ...extra,
  });
  return {
    prefix, dataDir, databaseUrl: db?.url ?? null, env,
    // BENCH_PROFILE=<dir>: run from source under Bun's CPU profiler (markdown profile in <dir> on exit).
    start: (extra) =>
      spawn(
        process.env.BENCH_PROFILE
          ? ["bun", "--cpu-prof-md", `--cpu-prof-dir=${process.env.BENCH_PROFILE}`, path.join(ROOT, "src/main.ts"), "serve"]
          : [projectBinary(), "serve"],
        env(extra),
        `daarion-city (${store})`,
      ),
    dispose: async () => {
      await deleteLivingMapStream(NATS_URL, prefix);
      await db?.drop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

let nc: NatsConnection;

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = new RegExp(`^${name} (\\d+)`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}

/** Polls a metric until it reaches `target` (or nothing moved for `idleMs`); returns when it got there. */
async function waitMetric(url: string, name: string, target: number, idleMs = 10_000): Promise<{ value: number; at: number }> {
  let last = -1;
  let lastAt = performance.now();
  for (;;) {
    const v = await metric(url, name);
    const t = performance.now();
    if (v !== last) {
      last = v;
      lastAt = t;
    }
    if (v >= target || t - lastAt > idleMs) return { value: v, at: lastAt };
    await Bun.sleep(50);
  }
}

/** Publishes `n` events of the simulator's mix on `prefix`, paced to `rate` per second (0: as fast as NATS takes them). */
async function publish(prefix: string, n: number, rate: number, opts: { jetstream?: boolean; stamp?: boolean; seed?: number } = {}): Promise<number> {
  const next = world({ nodes: 200, agents: 1000, seed: opts.seed ?? 7 });
  const enc = new TextEncoder();
  const js = opts.jetstream ? nc.jetstream() : null;
  const inFlight = new Set<Promise<unknown>>();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    if (rate > 0) {
      const due = t0 + (i * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 1) await Bun.sleep(wait);
    }
    const e = next();
    const payload = opts.stamp ? { ...e.payload, bench_t: Math.round(now() * 1000) } : e.payload;
    const data = enc.encode(JSON.stringify(payload));
    if (js) {
      const p = js.publish(`${prefix}.${e.subject}`, data);
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
      if (inFlight.size >= 2000) await Promise.race(inFlight);
    } else nc.publish(`${prefix}.${e.subject}`, data);
  }
  await Promise.all(inFlight);
  await nc.flush();
  return n;
}

// ---- 1. snapshot under load ----------------------------------------------------------------

interface SnapshotResult {
  phase: "idle" | "1,000 events/s";
  requests: number;
  p50_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  bytes: number;
  events_applied: number;
}

async function snapshotBench(): Promise<SnapshotResult[]> {
  const city = await makeCity("postgres");
  const server = await city.start();
  const out: SnapshotResult[] = [];
  try {
    // The scene: every node, agent, microDAO and DAO of the simulator's world seen at least once.
    await publish(city.prefix, 6000, 0, { seed: 11 });
    await waitMetric(server.url, "daarion_city_living_map_events_applied_total", 6000);
    const token = await signToken(BENCH_SECRET, "u_bench_snapshot", 24 * 3600);
    const headers = { authorization: `Bearer ${token}` };
    const measure = async (ms: number) => {
      const h = new Histogram();
      let bytes = 0;
      const end = performance.now() + ms;
      while (performance.now() < end) {
        const t = performance.now();
        const res = await fetch(`${server.url}/living-map/snapshot`, { headers });
        const body = await res.arrayBuffer();
        h.record((performance.now() - t) * 1000);
        if (res.status !== 200) throw new Error(`snapshot: ${res.status}`);
        bytes = body.byteLength;
      }
      return { h: h.toData(), bytes };
    };
    const seconds = quick ? 2 : 10;
    const applied0 = await metric(server.url, "daarion_city_living_map_events_applied_total");
    const idle = await measure(seconds * 1000);
    out.push({ phase: "idle", requests: idle.h.total, p50_ms: quantileMs(idle.h, 0.5), p99_ms: quantileMs(idle.h, 0.99), max_ms: idle.h.maxUs / 1000, bytes: idle.bytes, events_applied: (await metric(server.url, "daarion_city_living_map_events_applied_total")) - applied0 });
    const applied1 = await metric(server.url, "daarion_city_living_map_events_applied_total");
    const flowing = publish(city.prefix, 1000 * (seconds + 1), 1000, { seed: 12 });
    await Bun.sleep(500);
    const busy = await measure(seconds * 1000);
    await flowing;
    out.push({ phase: "1,000 events/s", requests: busy.h.total, p50_ms: quantileMs(busy.h, 0.5), p99_ms: quantileMs(busy.h, 0.99), max_ms: busy.h.maxUs / 1000, bytes: busy.bytes, events_applied: (await metric(server.url, "daarion_city_living_map_events_applied_total")) - applied1 });
  } finally {
    await server.stop();
    await city.dispose();
  }
  return out;
}

// ---- 2. events into history ----------------------------------------------------------------

interface HistoryResult {
  store: "postgres" | "sqlite";
  phase: "backlog at start" | "live, publishing as fast as JetStream takes";
  events: number;
  seconds: number;
  events_per_s: number;
  /** Whole run, read from the store after the binary stopped. */
  lost: number;
  duplicated: number;
  cpu_s: number;
  /** The binary's resident memory at the end of the phase. */
  rss_mb: number;
}

async function storedSequences(city: City): Promise<{ rows: number; distinct: number; maxSeq: number }> {
  const q = "select count(*) as rows, count(distinct stream_seq) as distinct_seqs, max(stream_seq) as max_seq from living_map_history where source = 'jetstream'";
  if (city.databaseUrl) {
    const sql = postgres(city.databaseUrl, { max: 1, onnotice: () => {} });
    const [r] = await sql.unsafe(q);
    await sql.end();
    return { rows: Number(r!.rows), distinct: Number(r!.distinct_seqs), maxSeq: Number(r!.max_seq ?? 0) };
  }
  const db = new Database(path.join(city.dataDir, "city.sqlite"), { readonly: true });
  const r = db.query(q).get() as { rows: number; distinct_seqs: number; max_seq: number | null };
  db.close();
  return { rows: r.rows, distinct: r.distinct_seqs, maxSeq: r.max_seq ?? 0 };
}

/** CPU seconds by thread name of the binary at the end of the backlog phase (which thread pays). */
const threads: Record<string, Record<string, number>> = {};

async function historyBench(store: "postgres" | "sqlite", n: number): Promise<HistoryResult[]> {
  const city = await makeCity(store);
  const out: HistoryResult[] = [];
  try {
    // First start: the stream and the durable consumer are made; then down.
    await (await city.start()).stop();
    await publish(city.prefix, n, 0, { jetstream: true, seed: 21 });
    const t0 = performance.now();
    const server = await city.start();
    try {
      const cpu0 = cpuSeconds(server.pid);
      const backlog = await waitMetric(server.url, "daarion_city_living_map_events_stored_total", n);
      threads[store] = threadCpu(server.pid);
      const s1 = (backlog.at - t0) / 1000;
      out.push({ store, phase: "backlog at start", events: backlog.value, seconds: r2(s1)!, events_per_s: Math.round(backlog.value / s1), lost: 0, duplicated: 0, cpu_s: r2(cpuSeconds(server.pid) - cpu0)!, rss_mb: Math.round(rssBytes(server.pid) / 2 ** 20) });
      const cpu1 = cpuSeconds(server.pid);
      const t1 = performance.now();
      await publish(city.prefix, n, 0, { jetstream: true, seed: 22 });
      const live = await waitMetric(server.url, "daarion_city_living_map_events_stored_total", 2 * n);
      const s2 = (live.at - t1) / 1000;
      out.push({ store, phase: "live, publishing as fast as JetStream takes", events: live.value - backlog.value, seconds: r2(s2)!, events_per_s: Math.round((live.value - backlog.value) / s2), lost: 0, duplicated: 0, cpu_s: r2(cpuSeconds(server.pid) - cpu1)!, rss_mb: Math.round(rssBytes(server.pid) / 2 ** 20) });
    } finally {
      await server.stop();
    }
    const seqs = await storedSequences(city);
    // Every sequence 1..2n exactly once (the first n in the backlog, the next n live).
    for (const r of out) {
      r.lost = 2 * n - seqs.distinct;
      r.duplicated = seqs.rows - seqs.distinct;
    }
    if (seqs.maxSeq !== 2 * n) console.error(`  history ${store}: highest stream sequence ${seqs.maxSeq}, expected ${2 * n}`);
  } finally {
    await city.dispose();
  }
  return out;
}

// ---- 3. stream fan-out ---------------------------------------------------------------------

type FanoutServer = "raw-bun-nats" | "project (JetStream)" | "project (core NATS)";
const FANOUT_SERVERS: FanoutServer[] = ["raw-bun-nats", "project (JetStream)", "project (core NATS)"];

interface FanoutResult {
  server: FanoutServer;
  rate: number;
  rep: number;
  sockets: number;
  sent: number;
  expected: number;
  received: number;
  lost: number;
  p50_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  cpu_s: number;
}

const tokens: string[] = [];
async function tokensFor(n: number): Promise<string[]> {
  while (tokens.length < n) tokens.push(await signToken(BENCH_SECRET, `u_bench_map_${tokens.length}`, 24 * 3600));
  return tokens.slice(0, n);
}

async function fanoutOnce(server: FanoutServer, rate: number, rep: number, sockets: number, durationMs: number): Promise<FanoutResult> {
  const city = await makeCity("postgres");
  const proc =
    server === "raw-bun-nats"
      ? await spawn(["bun", path.join(ROOT, "bench/peers/bun-raw-nats.ts")], { PORT: "0", NATS_URL, NATS_SUBJECT_PREFIX: city.prefix }, server)
      : await city.start(server === "project (core NATS)" ? { LIVING_MAP_JETSTREAM: "off" } : {});
  const clients: ClientProc<MapCommand>[] = [];
  try {
    const all = await tokensFor(sockets);
    const half = Math.ceil(sockets / 2);
    for (const [i, part] of [all.slice(0, half), all.slice(half)].entries()) {
      const c = await ClientProc.start<MapCommand>("map-client.ts", i + 1);
      clients.push(c);
      const r = await c.call<{ opened: number }>({ op: "open", baseWs: proc.url.replace("http", "ws"), tokens: part, concurrency: 50 });
      if (r.opened !== part.length) throw new Error(`${server}: ${r.opened} of ${part.length} sockets opened`);
    }
    await Bun.sleep(500);
    await Promise.all(clients.map((c) => c.call({ op: "reset" })));
    const cpu0 = cpuSeconds(proc.pid);
    const sent = await publish(city.prefix, Math.round((rate * durationMs) / 1000), rate, { stamp: true, seed: 31 + rep });
    const expected = sent * sockets;
    await drain(clients, expected, { maxMs: 10_000, idleMs: 1000 });
    const cpu = cpuSeconds(proc.pid) - cpu0;
    const reports = await Promise.all(clients.map((c) => c.call<MapReport>({ op: "report" })));
    let hist: HistogramData | null = null;
    for (const r of reports) hist = merge(hist, r.hist);
    const received = reports.reduce((a, r) => a + r.received, 0);
    return {
      server, rate, rep, sockets, sent, expected, received, lost: Math.max(0, expected - received),
      p50_ms: hist && quantileMs(hist, 0.5), p99_ms: hist && quantileMs(hist, 0.99), max_ms: hist ? hist.maxUs / 1000 : null, cpu_s: r2(cpu)!,
    };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await proc.stop();
    await city.dispose();
  }
}

// ---- main ----------------------------------------------------------------------------------

const mean = (xs: (number | null)[]) => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
};

async function main(): Promise<void> {
  for (const v of ["DATABASE_URL", "NATS_URL"]) if (!process.env[v]) throw new Error(`bench:living-map needs ${v}`);
  nc = await connect({ servers: NATS_URL, name: "bench-living-map" });
  await (await nc.jetstreamManager()).getAccountInfo().catch(() => {
    throw new Error("bench:living-map needs JetStream on NATS_URL (nats-server -js)");
  });
  const started = new Date();
  const t0 = performance.now();
  buildProject();

  // BENCH_ONLY=snapshot|history|fanout runs one part (scratch results only).
  const only = process.env.BENCH_ONLY;
  const snapshot = !only || only === "snapshot" ? await snapshotBench() : [];
  for (const s of snapshot) console.error(`  snapshot ${s.phase}: ${s.requests} requests p50 ${s.p50_ms} p99 ${s.p99_ms} max ${s.max_ms} ms, ${s.bytes} bytes, ${s.events_applied} events applied`);

  const history: HistoryResult[] = [];
  for (const store of !only || only === "history" ? (["postgres", "sqlite"] as const) : []) {
    const rs = await historyBench(store, Number(process.env.BENCH_HISTORY_EVENTS ?? (quick ? 20_000 : 100_000)));
    console.error(`  history ${store}: CPU s by thread after the backlog ${JSON.stringify(threads[store])}`);
    for (const r of rs) console.error(`  history ${store} ${r.phase}: ${r.events} events in ${r.seconds} s = ${r.events_per_s}/s, lost ${r.lost}, duplicated ${r.duplicated}, cpu ${r.cpu_s} s, rss ${r.rss_mb} MB`);
    history.push(...rs);
  }

  const rates = only && only !== "fanout" ? [] : quick ? [100] : [100, 300];
  const reps = quick ? 1 : 2;
  const sockets = 1000;
  const fanRuns: FanoutResult[] = [];
  for (const rate of rates) {
    for (let rep = 0; rep < reps; rep++) {
      for (const server of rep % 2 ? [...FANOUT_SERVERS].reverse() : FANOUT_SERVERS) {
        const r = await fanoutOnce(server, rate, rep, sockets, quick ? 2000 : 4000);
        console.error(`  fan-out ${server} ${rate}/s rep ${rep}: p50 ${r.p50_ms} p99 ${r.p99_ms} max ${r.max_ms} ms, lost ${r.lost} of ${r.expected}, cpu ${r.cpu_s} s`);
        fanRuns.push(r);
      }
    }
  }
  const fanout = [];
  for (const rate of rates) {
    const raw = fanRuns.filter((r) => r.rate === rate && r.server === "raw-bun-nats");
    for (const server of FANOUT_SERVERS) {
      const rs = fanRuns.filter((r) => r.rate === rate && r.server === server);
      const p99 = mean(rs.map((r) => r.p99_ms));
      fanout.push({
        server, rate, sockets, reps: rs.length, deliveries_per_s: rate * sockets, p50_ms: r2(mean(rs.map((r) => r.p50_ms))), p99_ms: r2(p99), max_ms: r2(mean(rs.map((r) => r.max_ms))),
        p99_vs_raw: r2(p99! / mean(raw.map((r) => r.p99_ms))!), lost: rs.reduce((a, r) => a + r.lost, 0), cpu_s: r2(mean(rs.map((r) => r.cpu_s))),
      });
    }
  }
  for (const f of fanout) console.log(JSON.stringify(f));
  await nc.close();

  const meta = {
    date: started.toISOString(), command: `bun run bench:living-map${quick ? " --quick" : ""}`, duration_s: Math.round((performance.now() - t0) / 1000),
    machine: { cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model ?? "?", memory_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), bun: Bun.version },
  };
  const scratch = quick || Boolean(only) || Boolean(process.env.BENCH_BINARY);
  const dir = path.join(ROOT, "bench/results", scratch ? "scratch" : "");
  mkdirSync(dir, { recursive: true });
  const json = JSON.stringify({ meta, snapshot, history, history_threads_cpu_s: threads, fanout, fanRuns }, null, 1);
  writeFileSync(path.join(dir, `living-map-${started.toISOString().replace(/[:.]/g, "-")}.json`), json);
  if (!scratch) {
    writeFileSync(path.join(dir, "latest-living-map.json"), json);
    render(meta, snapshot, history, fanout);
  }
}

function render(meta: any, snapshot: SnapshotResult[], history: HistoryResult[], fanout: any[]): void {
  const fmt = (x: number | null | undefined) => (x === null || x === undefined ? "–" : x.toLocaleString("en-US"));
  const lines = [
    `Run ${meta.date} · \`${meta.command}\` · ${meta.duration_s} s · ${meta.machine.cpus} cores shared by the binary, PostgreSQL, NATS and the clients`,
    "",
    "**Snapshot** (`GET /living-map/snapshot`, one request after the other; 200 nodes, 1,000 agents, 200 microDAOs, 100 DAOs):",
    "",
    "| events flowing | requests | p50 ms | p99 ms | max ms | bytes | events applied meanwhile |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...snapshot.map((s) => `| ${s.phase} | ${fmt(s.requests)} | ${fmt(s.p50_ms)} | ${fmt(s.p99_ms)} | ${fmt(s.max_ms)} | ${fmt(s.bytes)} | ${fmt(s.events_applied)} |`),
    "",
    "**Events into history** (JetStream durable consumer → `living_map_history`, acknowledged after the write; lost and duplicated counted in the store over the whole run):",
    "",
    "| store | phase | events | seconds | events/s | lost | duplicated | binary CPU s | binary RSS MB after |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ...history.map((h) => `| ${h.store} | ${h.phase} | ${fmt(h.events)} | ${fmt(h.seconds)} | ${fmt(h.events_per_s)} | ${h.lost} | ${h.duplicated} | ${fmt(h.cpu_s)} | ${fmt(h.rss_mb)} |`),
    "",
    "**Stream fan-out** (1,000 sockets on `/living-map/stream`; latency from publication on NATS to receipt, every socket):",
    "",
    "| server | events/s | deliveries/s | p50 ms | p99 ms | p99 × raw | max ms | lost | server CPU s |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...fanout.map((f) => `| ${f.server} | ${fmt(f.rate)} | ${fmt(f.deliveries_per_s)} | ${fmt(f.p50_ms)} | ${fmt(f.p99_ms)} | ${fmt(f.p99_vs_raw)} | ${fmt(f.max_ms)} | ${f.lost} | ${fmt(f.cpu_s)} |`),
  ];
  writeSection("living-map", lines.join("\n"));
}

await main();
