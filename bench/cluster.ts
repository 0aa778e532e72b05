/**
 * Across instances: the compiled binary as one city of several instances on one PostgreSQL, Redis
 * and NATS, against one instance with the same sockets, in the same run (interleaved A B C, then
 * C B A). The publisher always talks to instance 0; receivers are spread evenly over the instances,
 * so with three instances two thirds of the deliveries cross NATS.
 *
 * Configurations: `one` (1 instance), `three-worker` (3 instances, inbound NATS in the bus worker,
 * the default), `three-main` (3 instances, NATS_BUS_WORKER=off: inbound NATS on the main thread).
 * The last two answer the design card's question: does the bus worker cost cross-instance
 * throughput (the issue: keep it unless it costs more than 10%)?
 *
 *   bun run bench:cluster           needs DATABASE_URL, REDIS_URL, NATS_URL; writes results/ and README
 *   bun run bench:cluster --quick   one short rep, JSON lines only (results/scratch/)
 *   bun run bench:cluster --rate=N  one short rep at N msg/s (results/scratch/)
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { signToken } from "../src/auth/tokens.ts";
import { encodeRoomMessage } from "../src/engine/protocol.ts";
import { merge, quantileMs, type HistogramData } from "./load/hist.ts";
import type { Command, Report, SocketPlan } from "./load/client.ts";
import { ClientProc, drain } from "./load/proc.ts";
import { BENCH_SECRET, buildProject, cpuSeconds, createBenchSchema, deleteLivingMapStream, projectBinary, ROOT, spawnListening, type ListeningProcess } from "./servers.ts";
import { writeSection } from "./render.ts";

type Config = "one" | "three-worker" | "three-main";
const CONFIGS: Config[] = ["one", "three-worker", "three-main"];

interface Scenario {
  id: string;
  title: string;
  receivers: number;
  publishers: number;
  rate?: number;
  window?: number;
  durationMs: number;
}

const FULL: Scenario[] = [
  { id: "cross-300", title: "1 room × 999 sockets, 300 msg/s", receivers: 999, publishers: 1, rate: 300, durationMs: 4000 },
  { id: "cross-saturation", title: "1 room × 999 sockets, saturation (4 publishers × 16 in flight)", receivers: 999, publishers: 4, window: 16, durationMs: 4000 },
];
const QUICK: Scenario[] = [{ id: "cross-300", title: "1 room × 999 sockets, 300 msg/s", receivers: 999, publishers: 1, rate: 300, durationMs: 1500 }];

const ROOM = "room_city_general";
const DELIVERED_OVERHEAD = (() => {
  const body = "bench:100000:1000:1795312345678901";
  const frame = encodeRoomMessage(ROOM, {
    id: "m_city_01M804F33V2FA7KW6EZN00WZMW", room_id: ROOM, seq: 1234567, author_user_id: "u_bench_1000", author_agent_id: null, body, created_at: new Date().toISOString(),
  });
  return frame.length - body.length;
})();

type Instance = ListeningProcess;

/** Starts `n` binaries on one fresh database, one Redis prefix and one NATS prefix. */
async function startCity(n: number, extraEnv: Record<string, string>): Promise<{ instances: Instance[]; stop(): Promise<void> }> {
  const db = await createBenchSchema();
  const prefix = `bench_${Math.random().toString(36).slice(2, 8)}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), "dc-bench-cluster-"));
  const instances: Instance[] = [];
  for (let i = 0; i < n; i++) {
    const env: Record<string, string> = {
      PORT: "0", HOST: "127.0.0.1", DATA_DIR: mkdtempSync(path.join(dir, "d-")),
      JWT_SECRET: BENCH_SECRET, LOG_LEVEL: "info", CITY_WRITE_RATE_PER_SECOND: "0", CITY_DEFAULT_ROOMS: "general",
      DATABASE_URL: db.url, REDIS_URL: process.env.REDIS_URL!, REDIS_KEY_PREFIX: `${prefix}:`, NATS_URL: process.env.NATS_URL!, NATS_SUBJECT_PREFIX: prefix,
      ...extraEnv,
    };
    instances.push(await spawnListening([projectBinary(), "serve"], env, `instance ${i}`));
  }
  return {
    instances,
    stop: async () => {
      await Promise.all(instances.map((i) => i.stop()));
      await deleteLivingMapStream(process.env.NATS_URL!, prefix);
      await db.drop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface Result {
  scenario: string;
  config: Config;
  rep: number;
  sent: number;
  expected: number;
  received: number;
  lost: number;
  late: number;
  /** Receiving sockets the instances closed (4008 slow consumer). */
  closed: number;
  deliveries_per_s: number;
  p50_ms: number | null;
  p99_ms: number | null;
  echo_p99_ms: number | null;
  /** CPU of every instance together during the publishing window. */
  cpu_s: number;
}

const tokens: string[] = [];
async function tokenFor(i: number): Promise<string> {
  while (tokens.length <= i) tokens.push(await signToken(BENCH_SECRET, `u_bench_${tokens.length}`, 24 * 3600));
  return tokens[i]!;
}

async function runOnce(s: Scenario, config: Config, rep: number): Promise<Result> {
  const city = await startCity(config === "one" ? 1 : 3, config === "three-main" ? { NATS_BUS_WORKER: "off" } : {});
  const clients: ClientProc<Command>[] = [];
  try {
    const recv = await ClientProc.start<Command>("client.ts", 1);
    const pub = await ClientProc.start<Command>("client.ts", 2);
    clients.push(recv, pub);
    const n = city.instances.length;
    for (let i = 0; i < n; i++) {
      const plans: SocketPlan[] = [];
      for (let r = i; r < s.receivers; r += n) plans.push({ room: ROOM, role: "recv", token: await tokenFor(r % 1000) });
      await recv.call({ op: "open", kind: "project", baseWs: city.instances[i]!.url.replace("http", "ws"), sockets: plans, concurrency: 100, deliveredOverhead: DELIVERED_OVERHEAD });
    }
    const pubs: SocketPlan[] = [];
    for (let p = 0; p < s.publishers; p++) pubs.push({ room: ROOM, role: "pub", token: await tokenFor(1000 + p) });
    await pub.call({ op: "open", kind: "project", baseWs: city.instances[0]!.url.replace("http", "ws"), sockets: pubs, concurrency: 10, deliveredOverhead: DELIVERED_OVERHEAD });
    await Bun.sleep(700);
    await Promise.all(clients.map((c) => c.call({ op: "reset" })));
    const cpu0 = city.instances.reduce((a, i) => a + cpuSeconds(i.pid), 0);
    const t0 = performance.now();
    const published = await pub.call<{ sent: Record<string, number> }>({ op: "publish", durationMs: s.durationMs, ratePerPublisher: s.rate, window: s.window });
    const sent = Object.values(published.sent).reduce((a, b) => a + b, 0);
    const expected = sent * s.receivers;
    const { received: last, lastChange } = await drain([recv], expected, { maxMs: 8000, idleMs: 700 });
    const elapsed = (lastChange - t0) / 1000;
    const cpu = city.instances.reduce((a, i) => a + cpuSeconds(i.pid), 0) - cpu0;
    let late = 0;
    if (last < expected && !s.window) {
      await Bun.sleep(3000);
      late = (await recv.call<{ received: number }>({ op: "count" })).received - last;
    }
    const report = await recv.call<Report>({ op: "report" });
    const pubReport = await pub.call<Report>({ op: "report" });
    const hist: HistogramData | null = merge(null, report.hist);
    const received = Object.values(report.received).reduce((a, b) => a + b, 0);
    return {
      scenario: s.id, config, rep, sent, expected, received, lost: Math.max(0, expected - received), late, closed: report.closes,
      deliveries_per_s: Math.round(received / elapsed), p50_ms: hist && quantileMs(hist, 0.5), p99_ms: hist && quantileMs(hist, 0.99),
      echo_p99_ms: quantileMs(pubReport.echo, 0.99), cpu_s: Math.round(cpu * 100) / 100,
    };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await city.stop();
  }
}

const mean = (xs: (number | null)[]) => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
};
const r2 = (x: number | null) => (x === null ? null : Math.round(x * 100) / 100);

async function main(): Promise<void> {
  for (const v of ["DATABASE_URL", "REDIS_URL", "NATS_URL"]) if (!process.env[v]) throw new Error(`bench:cluster needs ${v}`);
  const quick = process.argv.includes("--quick");
  const rateArg = process.argv.find((a) => a.startsWith("--rate="));
  const scenarios = rateArg
    ? [{ id: `cross-${rateArg.slice(7)}`, title: `1 room × 999 sockets, ${rateArg.slice(7)} msg/s`, receivers: 999, publishers: 1, rate: Number(rateArg.slice(7)), durationMs: 2000 }]
    : quick
      ? QUICK
      : FULL;
  const reps = quick ? 1 : 2;
  const started = new Date();
  const t0 = performance.now();
  buildProject();
  const runs: Result[] = [];
  const summaries = [];
  for (const s of scenarios) {
    const mine: Result[] = [];
    for (let rep = 0; rep < reps; rep++) {
      for (const config of rep % 2 ? [...CONFIGS].reverse() : CONFIGS) {
        const r = await runOnce(s, config, rep);
        mine.push(r);
        console.error(`  ${s.id} ${config} rep ${rep}: ${r.deliveries_per_s} deliveries/s p99 ${r.p99_ms} ms lost ${r.lost} late ${r.late} closed ${r.closed} cpu ${r.cpu_s} s`);
      }
    }
    runs.push(...mine);
    const one = mine.filter((r) => r.config === "one");
    for (const config of CONFIGS) {
      const rs = mine.filter((r) => r.config === config);
      const sum = {
        scenario: s.id, title: s.title, config, reps: rs.length, deliveries_per_s: Math.round(mean(rs.map((r) => r.deliveries_per_s))!),
        p50_ms: r2(mean(rs.map((r) => r.p50_ms))), p99_ms: r2(mean(rs.map((r) => r.p99_ms))), echo_p99_ms: r2(mean(rs.map((r) => r.echo_p99_ms))),
        lost: rs.reduce((a, r) => a + r.lost, 0), late: rs.reduce((a, r) => a + r.late, 0), closed: rs.reduce((a, r) => a + r.closed, 0),
        cpu_s: r2(mean(rs.map((r) => r.cpu_s))),
        deliveries_vs_one: r2(mean(rs.map((r) => r.deliveries_per_s))! / mean(one.map((r) => r.deliveries_per_s))!),
        p99_vs_one: r2(mean(rs.map((r) => r.p99_ms))! / mean(one.map((r) => r.p99_ms))!),
      };
      summaries.push(sum);
      console.log(JSON.stringify(sum));
    }
  }
  const meta = {
    date: started.toISOString(), command: `bun run bench:cluster${quick ? " --quick" : ""}`, duration_s: Math.round((performance.now() - t0) / 1000),
    machine: { cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model ?? "?", memory_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), bun: Bun.version },
  };
  const scratch = quick || Boolean(rateArg) || Boolean(process.env.BENCH_BINARY);
  const dir = path.join(ROOT, "bench/results", scratch ? "scratch" : "");
  mkdirSync(dir, { recursive: true });
  const json = JSON.stringify({ meta, summaries, runs }, null, 1);
  writeFileSync(path.join(dir, `cluster-${started.toISOString().replace(/[:.]/g, "-")}.json`), json);
  if (!scratch) {
    writeFileSync(path.join(dir, "latest-cluster.json"), json);
    renderCluster(meta, summaries);
  }
}

function renderCluster(meta: any, summaries: any[]): void {
  const fmt = (x: number | null | undefined) => (x === null || x === undefined ? "–" : x.toLocaleString("en-US"));
  const lines = [
    `Run ${meta.date} · \`${meta.command}\` · ${meta.duration_s} s · ${meta.machine.cpus} cores shared by every instance, PostgreSQL, Redis, NATS and the clients`,
    "",
    "| scenario | city | deliveries/s | × one | p50 ms | p99 ms | p99 × one | echo p99 ms | lost | late | closed | CPU s (all instances) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...summaries.map(
      (s) =>
        `| ${s.title} | ${s.config} | ${fmt(s.deliveries_per_s)} | ${fmt(s.deliveries_vs_one)} | ${fmt(s.p50_ms)} | ${fmt(s.p99_ms)} | ${fmt(s.p99_vs_one)} | ${fmt(s.echo_p99_ms)} | ${s.lost} | ${s.late} | ${s.closed} | ${fmt(s.cpu_s)} |`,
    ),
  ];
  writeSection("cluster", lines.join("\n"));
}

await main();
