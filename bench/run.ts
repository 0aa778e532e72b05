/**
 * Fan-out benchmark: every scenario on every server in one invocation, interleaved (A B C D, then
 * D C B A) to cancel drift, with one load client for all (bench/load/client.ts).
 *
 *   bun run bench           full run (under 10 minutes); results in bench/results/, table in bench/README.md
 *   bun run bench:quick     under 60 s; one JSON line per scenario and server, ratio to raw Bun included
 *
 * Options: --quick, --only=<scenario,…>, --servers=<name,…>, --reps=N, --no-readme
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { signToken } from "../src/auth/tokens.ts";
import { encodeRoomMessage } from "../src/engine/protocol.ts";
import { median, merge, quantileMs, type HistogramData } from "./load/hist.ts";
import type { Command, Report, SocketPlan } from "./load/client.ts";
import { ClientProc, drain, quiet } from "./load/proc.ts";
import { availableServers, BENCH_SECRET, buildProject, cpuSeconds, ROOT, rssBytes, rssSampler, startServer, type RunningServer, type ServerName } from "./servers.ts";
import { stageSummary } from "./prom.ts";
import { renderReadme } from "./render.ts";

// ---- scenarios -------------------------------------------------------------------------------

export interface Scenario {
  id: string;
  title: string;
  mode: "fanout" | "saturation" | "idle" | "connect";
  rooms: number;
  /** Receiving sockets per room (publishers are extra sockets). */
  receivers: number;
  publishersPerRoom: number;
  /** Open loop: messages per second per publisher. */
  rate?: number;
  /** Closed loop: messages in flight per publisher. */
  window?: number;
  durationMs: number;
  /**
   * Reps in a full run (default 2). The tail scenarios take 4: a rep's p99 rests on its few worst
   * messages (400 at 100 msg/s, each reaching 1,000 sockets), and on this shared VM raw Bun's own
   * rep p99 moves 2-5x between neighbouring reps.
   */
  reps?: number;
}

const FULL: Scenario[] = [
  { id: "room1k-100", title: "1 room × 1,000 sockets, 100 msg/s", mode: "fanout", rooms: 1, receivers: 1000, publishersPerRoom: 1, rate: 100, durationMs: 4000, reps: 4 },
  { id: "room1k-300", title: "1 room × 1,000 sockets, 300 msg/s", mode: "fanout", rooms: 1, receivers: 1000, publishersPerRoom: 1, rate: 300, durationMs: 4000, reps: 4 },
  { id: "room1k-1000", title: "1 room × 1,000 sockets, 1,000 msg/s", mode: "fanout", rooms: 1, receivers: 1000, publishersPerRoom: 1, rate: 1000, durationMs: 4000 },
  { id: "room1k-saturation", title: "1 room × 1,000 sockets, saturation (4 publishers × 16 in flight)", mode: "saturation", rooms: 1, receivers: 1000, publishersPerRoom: 4, window: 16, durationMs: 4000 },
  { id: "room10k-10", title: "1 room × 10,000 sockets, 10 msg/s", mode: "fanout", rooms: 1, receivers: 10_000, publishersPerRoom: 1, rate: 10, durationMs: 4000 },
  { id: "rooms100x100", title: "100 rooms × 100 sockets, 100 publishers × 5 msg/s", mode: "fanout", rooms: 100, receivers: 100, publishersPerRoom: 1, rate: 5, durationMs: 4000 },
  { id: "idle10k", title: "idle memory: 10,000 authenticated sockets", mode: "idle", rooms: 1, receivers: 10_000, publishersPerRoom: 0, durationMs: 2000 },
  // A rep lasts a quarter of a second, so one stall of this shared VM moves it by 0.3x (the same
  // build read 0.56 to 0.87x raw in four runs within 20 minutes): six reps, compared by median.
  { id: "connect3k", title: "connection rate: 3,000 sockets, 64 at a time", mode: "connect", rooms: 1, receivers: 3000, publishersPerRoom: 0, durationMs: 0, reps: 6 },
];

const QUICK: Scenario[] = [
  { id: "room1k-300", title: "1 room × 1,000 sockets, 300 msg/s", mode: "fanout", rooms: 1, receivers: 1000, publishersPerRoom: 1, rate: 300, durationMs: 1500 },
  { id: "room1k-saturation", title: "1 room × 1,000 sockets, saturation (4 publishers × 16 in flight)", mode: "saturation", rooms: 1, receivers: 1000, publishersPerRoom: 4, window: 16, durationMs: 1500 },
  { id: "idle2k", title: "idle memory: 2,000 authenticated sockets", mode: "idle", rooms: 1, receivers: 2000, publishersPerRoom: 0, durationMs: 1000 },
];

// ---- client processes ------------------------------------------------------------------------

const startClient = (id: number) => ClientProc.start<Command>("client.ts", id);
type Client = ClientProc<Command>;

// ---- one measurement -------------------------------------------------------------------------

export interface RunResult {
  scenario: string;
  server: ServerName;
  rep: number;
  sockets: number;
  sent: number;
  expected: number;
  received: number;
  lost: number;
  errors: number;
  /** Receiving sockets the server closed during the run (the project closes slow consumers with 4008). */
  closed: number;
  /** Deliveries that arrived in the 3 s after the drain gave up (stalls, not losses); already in `received`. */
  late: number;
  /** Messages the project server says it committed and published (`/metrics`); null for the peers. */
  server_published: number | null;
  deliveries_per_s: number;
  p50_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  /** Publisher-to-own-echo latency: what the server adds, without the receivers' queueing. */
  echo_p50_ms?: number | null;
  echo_p99_ms?: number | null;
  server_cpu_s: number;
  peak_rss_mb: number;
  rss_per_socket_kb?: number;
  connections_per_s?: number;
  open_failed: number;
  /** How long the clients' frames took to stand still after the connects (and the 500 ms before), ms. */
  settle_ms?: number;
  /** The project's own view of the run (`/metrics` before and after): each write stage's p50/p99 and the event loop's delay. */
  stages?: Record<string, { count: number; p50_ms: number | null; p99_ms: number | null }>;
  loop_delay?: { count: number; p50_ms: number | null; p99_ms: number | null };
  /** Every delivery's and every echo's latency (merged over reps for the summary; left out of the JSON). */
  hist?: HistogramData;
  echo_hist?: HistogramData;
}

/** What the project's `room.message` frame adds to a bench body (the peers' frames are padded to match). */
const DELIVERED_OVERHEAD = process.env.BENCH_NO_PAD ? 0 : (() => {
  const body = "bench:100000:1000:1795312345678901";
  const frame = encodeRoomMessage("room_city_general", {
    id: "m_city_01M804F33V2FA7KW6EZN00WZMW", room_id: "room_city_general", seq: 1234567, author_user_id: "u_bench_1000", author_agent_id: null, body, created_at: new Date().toISOString(),
  });
  return frame.length - body.length;
})();

const tokens: string[] = [];
async function tokenFor(i: number): Promise<string> {
  while (tokens.length <= i) tokens.push(await signToken(BENCH_SECRET, `u_bench_${tokens.length}`, 24 * 3600));
  return tokens[i]!;
}

async function runOnce(s: Scenario, server: RunningServer, rep: number): Promise<RunResult> {
  const roomIds = Array.from({ length: s.rooms }, (_, i) => (s.rooms === 1 ? "room_city_general" : `room_city_b${i}`));
  if (server.kind === "project" && s.rooms > 1) await createRooms(server, roomIds);
  const total = s.rooms * s.receivers;
  const recvProcs = Math.max(s.mode === "connect" ? 2 : 1, Math.ceil(total / 5000));
  const clients: Client[] = [];
  for (let i = 0; i < recvProcs + (s.publishersPerRoom > 0 ? 1 : 0); i++) clients.push(await startClient(i + 1));
  const recvClients = clients.slice(0, recvProcs);
  const pubClient = s.publishersPerRoom > 0 ? clients[recvProcs]! : null;
  const baseWs = server.url.replace("http", "ws");
  const needsToken = server.kind === "project";

  const plans: SocketPlan[][] = recvClients.map(() => []);
  let n = 0;
  for (const room of roomIds) {
    for (let r = 0; r < s.receivers; r++) {
      plans[n % recvProcs]!.push({ room, role: "recv", token: needsToken ? await tokenFor(n % 1000) : undefined });
      n++;
    }
  }
  const pubPlans: SocketPlan[] = [];
  for (const room of roomIds) for (let p = 0; p < s.publishersPerRoom; p++) pubPlans.push({ room, role: "pub", token: needsToken ? await tokenFor(1000 + pubPlans.length) : undefined });

  const rssBefore = rssBytes(server.pid);
  const sampler = rssSampler(server.pid);
  const cpu0 = cpuSeconds(server.pid);
  const concurrency = s.mode === "connect" ? 32 : 200;
  const opened = await Promise.all(recvClients.map((c, i) => c.call<{ ok: number; failed: number; ms: number }>({ op: "open", kind: server.kind, baseWs, sockets: plans[i]!, concurrency, deliveredOverhead: DELIVERED_OVERHEAD })));
  const connectMs = Math.max(...opened.map((o) => o.ms));
  let openFailed = opened.reduce((a, o) => a + o.failed, 0);
  if (pubClient) openFailed += (await pubClient.call({ op: "open", kind: server.kind, baseWs, sockets: pubPlans, concurrency: 50, deliveredOverhead: DELIVERED_OVERHEAD })).failed;

  const result: RunResult = {
    scenario: s.id, server: server.name, rep, sockets: total + pubPlans.length, sent: 0, expected: 0, received: 0, lost: 0, errors: 0, closed: 0, late: 0, server_published: null,
    deliveries_per_s: 0, p50_ms: null, p99_ms: null, max_ms: null, server_cpu_s: 0, peak_rss_mb: 0, open_failed: openFailed,
  };

  if (s.mode === "idle" || s.mode === "connect") {
    const idleBefore = server.kind === "project" && s.mode === "idle" ? await (await fetch(`${server.url}/metrics`)).text() : "";
    await Bun.sleep(s.durationMs);
    if (idleBefore) {
      // What an idle server's periodic work (sweeps, flushes) does to its event loop with these sockets.
      result.loop_delay = stageSummary(idleBefore, await (await fetch(`${server.url}/metrics`)).text(), "daarion_city_event_loop_delay_seconds").all;
    }
    const rssAfter = rssBytes(server.pid);
    result.rss_per_socket_kb = round(((rssAfter - rssBefore) / total) / 1024, 2);
    result.connections_per_s = Math.round(total / (connectMs / 1000));
  } else {
    await Bun.sleep(500); // let joins settle (Socket.IO joins after connect)
    // The connect storm's own frames (the project announces each join in rooms of up to 200
    // users) may still be on their way: measure from when the clients' frame counts stand still.
    result.settle_ms = await quiet(clients, { stillMs: 250, maxMs: 10_000 });
    await Promise.all(clients.map((c) => c.call({ op: "reset" })));
    const metricsBefore = server.kind === "project" ? await (await fetch(`${server.url}/metrics`)).text() : "";
    const cpuStart = cpuSeconds(server.pid);
    const t0 = performance.now();
    const pub = await pubClient!.call<{ sent: Record<string, number> }>({ op: "publish", durationMs: s.durationMs, ratePerPublisher: s.rate, window: s.window });
    const expected = Object.values(pub.sent).reduce((a, b) => a + b, 0) * s.receivers;
    // drain: until everything expected arrived or nothing more arrives for 500 ms (max 5 s)
    const { received: last, lastChange } = await drain(recvClients, expected, { maxMs: 5000, idleMs: 500 });
    // from the first publication to the last delivery seen
    const elapsed = (lastChange - t0) / 1000;
    result.server_cpu_s = round(cpuSeconds(server.pid) - cpuStart, 2);
    if (last < expected && s.mode !== "saturation") {
      // Late or lost? Give stragglers 3 s more; whatever arrives now was delayed, not dropped.
      await Bun.sleep(3000);
      const again = await Promise.all(recvClients.map((c) => c.call<{ received: number }>({ op: "count" })));
      result.late = again.reduce((a, c) => a + c.received, 0) - last;
    }
    if (server.kind === "project") {
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      result.server_published = Number(/^daarion_city_room_messages_total (\d+)/m.exec(metrics)?.[1] ?? NaN);
      result.stages = stageSummary(metricsBefore, metrics, "daarion_city_message_stage_seconds");
      result.loop_delay = stageSummary(metricsBefore, metrics, "daarion_city_event_loop_delay_seconds").all;
    }
    const reports = await Promise.all(recvClients.map((c) => c.call<Report>({ op: "report" })));
    const pubReport = await pubClient!.call<Report>({ op: "report" });
    let hist: HistogramData | null = null;
    for (const r of reports) hist = merge(hist, r.hist);
    result.sent = Object.values(pub.sent).reduce((a, b) => a + b, 0);
    result.expected = expected;
    result.received = reports.reduce((a, r) => a + Object.values(r.received).reduce((x, y) => x + y, 0), 0);
    result.lost = Math.max(0, expected - result.received);
    result.errors = pubReport.errors + reports.reduce((a, r) => a + r.errors, 0);
    result.closed = reports.reduce((a, r) => a + r.closes, 0);
    result.deliveries_per_s = Math.round(result.received / elapsed);
    result.echo_p50_ms = quantileMs(pubReport.echo, 0.5);
    result.echo_p99_ms = quantileMs(pubReport.echo, 0.99);
    result.hist = hist ?? undefined;
    result.echo_hist = pubReport.echo;
    result.p50_ms = hist && quantileMs(hist, 0.5);
    result.p99_ms = hist && quantileMs(hist, 0.99);
    result.max_ms = hist ? round(hist.maxUs / 1000, 2) : null;
  }
  result.peak_rss_mb = round(sampler.stop() / 1048576, 1);
  if (s.mode === "idle" || s.mode === "connect") result.server_cpu_s = round(cpuSeconds(server.pid) - cpu0, 2);
  await Promise.all(clients.map((c) => c.close()));
  return result;
}

async function createRooms(server: RunningServer, ids: string[]): Promise<void> {
  const token = await tokenFor(0);
  await Promise.all(
    ids.map((id) =>
      fetch(`${server.url}/city/rooms`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ name: id, slug: id.replace("room_city_", "") }),
      }),
    ),
  );
}

const round = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;

// ---- aggregation -----------------------------------------------------------------------------

export interface Summary {
  scenario: string;
  title: string;
  server: ServerName;
  reps: number;
  deliveries_per_s: number;
  /** Quantiles of every delivery of every rep together (pooled), ms. */
  p50_ms: number | null;
  p99_ms: number | null;
  /** Each rep's own p99, in run order, ms (the table compares their medians: a rep the machine stalled moves that least). */
  p99_reps_ms?: (number | null)[];
  max_ms: number | null;
  echo_p50_ms: number | null;
  echo_p99_ms: number | null;
  lost: number;
  late: number;
  errors: number;
  closed: number;
  server_cpu_s: number;
  peak_rss_mb: number;
  rss_per_socket_kb?: number;
  /** Median of the reps' connection rates (a rep is short: one stall moves it a lot). */
  connections_per_s?: number;
  /** Each rep's connection rate, in run order. */
  connections_per_s_reps?: number[];
  /** The project only: p99 (ms) of each write stage, and of the event loop's delay, averaged over reps. */
  stage_p99_ms?: Record<string, number | null>;
  loop_delay_p99_ms?: number | null;
  ratio_to_raw: Record<string, number | null>;
}

function mean(xs: (number | null | undefined)[]): number | null {
  const v = xs.filter((x): x is number => typeof x === "number");
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
}

function summarise(s: Scenario, runs: RunResult[]): Summary[] {
  const byServer = new Map<ServerName, RunResult[]>();
  for (const r of runs) byServer.set(r.server, [...(byServer.get(r.server) ?? []), r]);
  const out: Summary[] = [];
  for (const [server, rs] of byServer) {
    // Quantiles over the deliveries of all reps together: one noisy rep moves them less than it
    // moves a mean of per-rep p99s, and they are what "p99 of the scenario" means.
    let hist: HistogramData | null = null;
    let echo: HistogramData | null = null;
    for (const r of rs) {
      if (r.hist) hist = merge(hist, r.hist);
      if (r.echo_hist) echo = merge(echo, r.echo_hist);
    }
    out.push({
      scenario: s.id, title: s.title, server, reps: rs.length,
      deliveries_per_s: Math.round(mean(rs.map((r) => r.deliveries_per_s)) ?? 0),
      p50_ms: hist ? quantileMs(hist, 0.5) : null,
      p99_ms: hist ? quantileMs(hist, 0.99) : null,
      ...(hist ? { p99_reps_ms: rs.map((r) => r.p99_ms) } : {}),
      max_ms: nullableRound(Math.max(...rs.map((r) => r.max_ms ?? 0)), 2),
      echo_p50_ms: echo ? quantileMs(echo, 0.5) : null,
      echo_p99_ms: echo ? quantileMs(echo, 0.99) : null,
      lost: rs.reduce((a, r) => a + r.lost, 0),
      late: rs.reduce((a, r) => a + r.late, 0),
      errors: rs.reduce((a, r) => a + r.errors + r.open_failed, 0),
      closed: rs.reduce((a, r) => a + r.closed, 0),
      server_cpu_s: round(mean(rs.map((r) => r.server_cpu_s)) ?? 0, 2),
      peak_rss_mb: round(Math.max(...rs.map((r) => r.peak_rss_mb)), 1),
      ...(s.mode === "idle" || s.mode === "connect"
        ? { rss_per_socket_kb: nullableRound(mean(rs.map((r) => r.rss_per_socket_kb)), 2) ?? undefined, connections_per_s: Math.round(median(rs.map((r) => r.connections_per_s)) ?? 0), connections_per_s_reps: rs.map((r) => r.connections_per_s ?? 0) }
        : {}),
      ...(rs.some((r) => r.stages)
        ? {
            stage_p99_ms: Object.fromEntries(["admit", "queue", "commit", "publish", "total"].map((st) => [st, nullableRound(mean(rs.map((r) => r.stages?.[st]?.p99_ms)), 2)])),
            loop_delay_p99_ms: nullableRound(mean(rs.map((r) => r.loop_delay?.p99_ms)), 2),
          }
        : {}),
      ratio_to_raw: {},
    });
  }
  const raw = out.find((o) => o.server === "raw-bun");
  for (const o of out) {
    const ratio = (a: number | null | undefined, b: number | null | undefined) => (a != null && b != null && b !== 0 ? round(a / b, 2) : null);
    o.ratio_to_raw =
      s.mode === "idle" || s.mode === "connect"
        ? { rss_per_socket_kb: ratio(o.rss_per_socket_kb, raw?.rss_per_socket_kb), connections_per_s: ratio(o.connections_per_s, raw?.connections_per_s) }
        : {
            deliveries_per_s: ratio(o.deliveries_per_s, raw?.deliveries_per_s), p50_ms: ratio(o.p50_ms, raw?.p50_ms), p99_ms: ratio(o.p99_ms, raw?.p99_ms),
            echo_p99_ms: ratio(o.echo_p99_ms, raw?.echo_p99_ms), server_cpu_s: ratio(o.server_cpu_s, raw?.server_cpu_s),
          };
  }
  return out;
}

const nullableRound = (x: number | null, d: number) => (x === null ? null : round(x, d));

// ---- main ------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = new Map(process.argv.slice(2).map((a) => [a.replace(/=.*/, ""), a.includes("=") ? a.slice(a.indexOf("=") + 1) : "1"]));
  const quick = args.has("--quick");
  let scenarios = quick ? QUICK : FULL;
  if (args.get("--only")) scenarios = scenarios.filter((s) => args.get("--only")!.split(",").includes(s.id));
  let servers = availableServers();
  if (args.get("--servers")) servers = servers.filter((s) => args.get("--servers")!.split(",").includes(s));
  const repsArg = args.get("--reps");
  const started = new Date();
  const t0 = performance.now();

  if (servers.some((s) => s.startsWith("project"))) {
    buildProject();
  }
  if (!process.env.DATABASE_URL) console.error("bench: DATABASE_URL is not set; project-postgres is left out of this run");

  const runs: RunResult[] = [];
  const summaries: Summary[] = [];
  for (const s of scenarios) {
    const scenarioRuns: RunResult[] = [];
    const reps = Number(repsArg ?? (quick ? 1 : (s.reps ?? 2)));
    for (let rep = 0; rep < reps; rep++) {
      const order = rep % 2 === 0 ? servers : [...servers].reverse();
      for (const name of order) {
        const server = await startServer(name);
        try {
          const r = await runOnce(s, server, rep);
          scenarioRuns.push(r);
          if (!quick) console.error(`  ${s.id} ${name} rep ${rep}: ${r.deliveries_per_s} deliveries/s p99 ${r.p99_ms} ms lost ${r.lost} late ${r.late} closed ${r.closed} published ${r.server_published ?? "-"}/${r.sent}${r.settle_ms !== undefined ? ` settled after ${r.settle_ms} ms` : ""}${r.rss_per_socket_kb !== undefined ? ` ${r.rss_per_socket_kb} KiB/socket` : ""}${r.stages ? ` stages p99 ${Object.entries(r.stages).map(([k, v]) => `${k} ${v.p99_ms}`).join(", ")}; loop delay p99 ${r.loop_delay?.p99_ms}` : ""}`);
        } finally {
          await server.stop();
        }
      }
    }
    runs.push(...scenarioRuns);
    for (const sum of summarise(s, scenarioRuns)) {
      summaries.push(sum);
      console.log(JSON.stringify(sum));
    }
  }

  const meta = {
    date: started.toISOString(),
    command: `bun run ${quick ? "bench:quick" : "bench"}${process.argv.slice(2).filter((a) => a !== "--quick").map((a) => " " + a).join("")}`,
    machine: { cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model ?? "?", memory_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release(), bun: Bun.version, node: nodeVersion() },
    duration_s: Math.round((performance.now() - t0) / 1000),
    scenarios: scenarios.map((s) => ({ id: s.id, title: s.title })),
  };
  // Unfiltered runs are the record (full-*.json and latest-*.json are committed); filtered runs
  // and experiments go to results/scratch/ (ignored by git).
  const filtered = args.has("--only") || args.has("--servers") || args.has("--reps") || Boolean(process.env.BENCH_PROJECT_ENV || process.env.BENCH_NO_PAD || process.env.BENCH_PROFILE || process.env.BENCH_BINARY);
  const dir = path.join(ROOT, "bench/results", filtered ? "scratch" : "");
  mkdirSync(dir, { recursive: true });
  const stamp = started.toISOString().replace(/[:.]/g, "-");
  const file = path.join(dir, `${quick ? "quick" : "full"}-${stamp}.json`);
  const json = JSON.stringify({ meta, summaries, runs: runs.map(({ hist, echo_hist, ...r }) => r) }, null, 1);
  writeFileSync(file, json);
  if (!filtered) writeFileSync(path.join(dir, `latest-${quick ? "quick" : "full"}.json`), json);
  console.error(`bench: ${runs.length} runs in ${meta.duration_s} s; results in ${path.relative(ROOT, file)}`);
  if (!quick && !filtered && !args.has("--no-readme")) renderReadme(meta, summaries);
}

function nodeVersion(): string {
  const r = Bun.spawnSync(["node", "--version"], { stdout: "pipe" });
  return r.stdout.toString().trim();
}

await main();
