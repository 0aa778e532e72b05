/**
 * Matrix presence benchmark (issue "Matrix presence aggregator", item 7). A fake homeserver in its
 * own process holds 10 rooms × 1,000 members joined by the bot and churns presence at a given rate;
 * the compiled binary (in-process engines, 10 rooms mapped by alias template) syncs it with the
 * loop in the sync worker (MATRIX_SYNC_WORKER=on) and on the main thread (`off`), interleaved.
 * Per run, over a measured window after the initial sync:
 * - user presence changes turned into room presence per second (`…matrix_user_presence_published_total`);
 * - CPU of the main thread and of the worker threads;
 * - what the main thread's other work feels: `GET /healthz` every 10 ms, p50/p99 (a fan-out on
 *   the same event loop waits the same).
 *
 *   bun run bench:matrix            churn 2,000 and 10,000 events/s, 2 reps each
 *   bun run bench:matrix --quick    churn 5,000 events/s, one rep
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { writeSection } from "./render.ts";
import { BENCH_SECRET, projectBinary, ROOT, spawnListening, threadCpu, type ListeningProcess } from "./servers.ts";

const quick = process.argv.includes("--quick");
const CHURNS = quick ? [5000] : [2000, 10_000];
const REPS = quick ? 1 : 2;
const WARMUP_MS = 3000;
const WINDOW_MS = quick ? 4000 : 6000;
const ROOMS = 10;
const MEMBERS = 1000;

interface Result {
  churn: number;
  mode: "worker" | "main";
  rep: number;
  applied_per_s: number;
  main_cpu_pct: number;
  worker_cpu_pct: number;
  healthz_p50_ms: number;
  healthz_p99_ms: number;
  members: number;
}

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

const q = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;

async function once(churn: number, mode: "worker" | "main", rep: number): Promise<Result> {
  const hs = await spawnListening(["bun", path.join(ROOT, "bench/load/fake-hs.ts")], { ROOMS: String(ROOMS), MEMBERS: String(MEMBERS), CHURN: String(churn) }, "fake homeserver");
  const dir = mkdtempSync(path.join(tmpdir(), "dc-bench-matrix-"));
  let city: ListeningProcess | null = null;
  try {
    const rooms = Array.from({ length: ROOMS }, (_, i) => `r${i}`).join(",");
    city = await spawnListening([projectBinary(), "serve"], {
      HOST: "127.0.0.1", PORT: "0", DATA_DIR: dir, JWT_SECRET: BENCH_SECRET, LOG_LEVEL: "info", CITY_DEFAULT_ROOMS: rooms,
      MATRIX_HS_URL: hs.url, MATRIX_ACCESS_TOKEN: "bench-token", MATRIX_USER_ID: "@bot:bench", MATRIX_ROOM_ALIAS_TEMPLATE: "#city_{slug}:bench",
      MATRIX_SYNC_WORKER: mode === "worker" ? "on" : "off", MATRIX_SYNC_TIMEOUT_MS: "30000",
    }, "daarion-city");
    await Bun.sleep(WARMUP_MS);
    const name = "daarion_city_matrix_user_presence_published_total";
    const c0 = await metric(city.url, name);
    const cpu0 = threadCpu(city.pid);
    const lat: number[] = [];
    const t0 = performance.now();
    while (performance.now() - t0 < WINDOW_MS) {
      const s = performance.now();
      await fetch(`${city.url}/healthz`);
      lat.push(performance.now() - s);
      await Bun.sleep(10);
    }
    const secs = (performance.now() - t0) / 1000;
    const c1 = await metric(city.url, name);
    const cpu1 = threadCpu(city.pid);
    const members = await metric(city.url, "daarion_city_matrix_members");
    const d = (k: string) => ((cpu1[k] ?? 0) - (cpu0[k] ?? 0)) / secs;
    lat.sort((a, b) => a - b);
    return {
      churn, mode, rep, applied_per_s: Math.round((c1 - c0) / secs), main_cpu_pct: Math.round(d("daarion-city") * 100), worker_cpu_pct: Math.round(d("Worker") * 100),
      healthz_p50_ms: Math.round(q(lat, 0.5) * 100) / 100, healthz_p99_ms: Math.round(q(lat, 0.99) * 100) / 100, members,
    };
  } finally {
    await city?.stop();
    await hs.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const started = Date.now();
const results: Result[] = [];
for (const churn of CHURNS) {
  for (let rep = 1; rep <= REPS; rep++) {
    for (const mode of rep % 2 ? (["worker", "main"] as const) : (["main", "worker"] as const)) {
      const r = await once(churn, mode, rep);
      results.push(r);
      console.log(JSON.stringify(r));
    }
  }
}

const lines = [
  `Run ${new Date(started).toISOString()} · \`bun run bench:matrix${quick ? " --quick" : ""}\` · ${Math.round((Date.now() - started) / 1000)} s. ${ROOMS} rooms × ${MEMBERS.toLocaleString("en-US")} Matrix members, presence churn from a fake homeserver in its own process; the binary on in-process engines.`,
  "",
  "| churn (events/s) | loop on | applied (changes/s) | main thread CPU | worker threads CPU | `/healthz` p50 | `/healthz` p99 |",
  "|---:|---|---:|---:|---:|---:|---:|",
];
for (const churn of CHURNS) {
  for (const mode of ["worker", "main"] as const) {
    const rs = results.filter((r) => r.churn === churn && r.mode === mode);
    const avg = (k: keyof Result) => Math.round((rs.reduce((s, r) => s + Number(r[k]), 0) / rs.length) * 100) / 100;
    lines.push(`| ${churn.toLocaleString("en-US")} | ${mode === "worker" ? "sync worker" : "main thread"} | ${avg("applied_per_s").toLocaleString("en-US")} | ${avg("main_cpu_pct")} % | ${avg("worker_cpu_pct")} % | ${avg("healthz_p50_ms")} ms | ${avg("healthz_p99_ms")} ms |`);
  }
}
writeSection("matrix", lines.join("\n"));
mkdirSync(path.join(ROOT, "bench/results"), { recursive: true });
writeFileSync(path.join(ROOT, "bench/results/latest-matrix.json"), JSON.stringify({ date: new Date(started).toISOString(), quick, results }, null, 2));
console.log(lines.join("\n"));
