/**
 * The servers under test, each started fresh for every measurement: the project's compiled binary
 * on the embedded default and on PostgreSQL, the raw Bun pub/sub ceiling, and Socket.IO on Node.
 * Also reads a process's CPU time and RSS from /proc.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTestSchema, deleteLivingMapStream } from "../test/helpers/engines.ts";
import type { ServerKind } from "./load/client.ts";

export const ROOT = path.join(import.meta.dir, "..");
export const BENCH_SECRET = "bench-secret-0123456789-abcdefghijklmnop";

export type ServerName = "raw-bun" | "project-sqlite" | "project-postgres" | "socketio-node";

export interface RunningServer {
  name: ServerName;
  kind: ServerKind;
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** Every server this machine can run: project-postgres needs DATABASE_URL. */
export function availableServers(): ServerName[] {
  const all: ServerName[] = ["raw-bun", "project-sqlite", "project-postgres", "socketio-node"];
  return process.env.DATABASE_URL ? all : all.filter((s) => s !== "project-postgres");
}

/** Starts `name` fresh; `extraEnv` is added to the project's environment. */
export async function startServer(name: ServerName, extraEnv: Record<string, string> = {}): Promise<RunningServer> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? "", PORT: "0", HOME: process.env.HOME ?? "/tmp" };
  let cmd: string[];
  let kind: ServerKind;
  const cleanups: (() => Promise<void> | void)[] = [];
  switch (name) {
    case "raw-bun":
      cmd = ["bun", path.join(ROOT, "bench/peers/bun-raw.ts")];
      kind = "raw";
      break;
    case "socketio-node":
      cmd = ["node", path.join(ROOT, "bench/peers/socketio.mjs")];
      kind = "socketio";
      break;
    case "project-sqlite":
    case "project-postgres": {
      kind = "project";
      const dir = mkdtempSync(path.join(tmpdir(), "dc-bench-"));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      Object.assign(env, {
        HOST: "127.0.0.1", DATA_DIR: dir, JWT_SECRET: BENCH_SECRET, LOG_LEVEL: "info",
        CITY_WRITE_RATE_PER_SECOND: "0", CITY_DEFAULT_ROOMS: "general",
      });
      // Experiments: BENCH_PROJECT_ENV='{"SQLITE_SYNCHRONOUS":"NORMAL"}' passes extra settings.
      Object.assign(env, extraEnv);
      if (process.env.BENCH_PROJECT_ENV) Object.assign(env, JSON.parse(process.env.BENCH_PROJECT_ENV));
      if (name === "project-postgres") {
        const db = await createBenchSchema();
        env.DATABASE_URL = db.url;
        cleanups.push(db.drop);
      }
      // BENCH_PROFILE=<dir>: run from source under Bun's CPU profiler (markdown profile in <dir> on exit),
      // sampling every BENCH_PROFILE_INTERVAL_US µs (100; read sample counts, not the wall-weighted times).
      // BENCH_PROFILE_FORMAT=cpuprofile writes a .cpuprofile instead: bench/profile-samples.ts counts its samples.
      cmd = process.env.BENCH_PROFILE
        ? ["bun", process.env.BENCH_PROFILE_FORMAT === "cpuprofile" ? "--cpu-prof" : "--cpu-prof-md", `--cpu-prof-interval=${process.env.BENCH_PROFILE_INTERVAL_US ?? 100}`, `--cpu-prof-dir=${process.env.BENCH_PROFILE}`, path.join(ROOT, "src/main.ts"), "serve"]
        : // BENCH_FROM_SOURCE=1: the sources without the profiler (to tell a bundling effect from a code one)
          process.env.BENCH_FROM_SOURCE ? ["bun", path.join(ROOT, "src/main.ts"), "serve"] : [projectBinary(), "serve"];
      break;
    }
  }
  const proc = await spawnListening(cmd, env, name);
  return {
    name,
    kind,
    url: proc.url,
    pid: proc.pid,
    stop: async () => {
      await proc.stop();
      for (const c of cleanups) await c();
    },
  };
}

/**
 * The binary the project runs as: `dist/daarion-city`, or BENCH_BINARY (another build, e.g. of an
 * older commit or an experiment, to compare two in interleaved runs; the benches then skip their build).
 */
export function projectBinary(): string {
  return process.env.BENCH_BINARY ?? path.join(ROOT, "dist/daarion-city");
}

/** Builds `dist/daarion-city` with the package's build script, unless BENCH_BINARY names another. @throws Error when the build fails */
export function buildProject(): void {
  if (process.env.BENCH_BINARY) return;
  const build = Bun.spawnSync(["bun", "run", "build"], { cwd: ROOT, stdout: "ignore", stderr: "inherit" });
  if (build.exitCode !== 0) throw new Error("bench: bun run build failed");
}

/** A process that reported where it listens. */
export interface ListeningProcess {
  url: string;
  pid: number;
  /** SIGTERM, then SIGKILL after `killAfterMs`; resolves when it exited. */
  stop(): Promise<void>;
}

/**
 * Spawns `cmd` with `env` (plus PATH and HOME), waits for its `listening` log line (20 s at most)
 * and keeps draining its stdout.
 * @throws Error when it exits or stays silent
 */
export async function spawnListening(cmd: string[], env: Record<string, string>, name: string, killAfterMs = 10_000): Promise<ListeningProcess> {
  const proc = Bun.spawn(cmd, { env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", ...env }, stdout: "pipe", stderr: "inherit", stdin: "ignore" });
  const url = await readListening(proc.stdout, name);
  return {
    url,
    pid: proc.pid,
    stop: async () => {
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), killAfterMs);
      await proc.exited;
      clearTimeout(t);
    },
  };
}

export async function readListening(stream: ReadableStream<Uint8Array>, name: string): Promise<string> {
  const reader = stream.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value);
    for (const line of buf.split("\n")) {
      if (!line.includes("listening")) continue;
      try {
        const url = JSON.parse(line).url as string;
        // keep draining stdout so the server never blocks on a full pipe
        void (async () => {
          while (!(await reader.read()).done);
        })();
        return url;
      } catch {
        /* partial line */
      }
    }
  }
  throw new Error(`${name} did not report listening: ${buf.slice(0, 500)}`);
}

/** A throwaway schema in DATABASE_URL's database, for one measurement. */
export const createBenchSchema = () => createTestSchema(process.env.DATABASE_URL!, "dc_bench");

/** The Living Map's JetStream stream that binaries with a NATS_SUBJECT_PREFIX made (the tests' helper). */
export { deleteLivingMapStream };

const TICKS = 100; // USER_HZ on Linux

/** User + system CPU seconds a process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

/**
 * CPU seconds (user + system) per thread name of a process (threads of one name summed; the
 * binary's are `daarion-city` for the main thread and `Worker` for the bus and SQLite writer
 * threads), the busiest first, those under 0.05 s left out.
 */
export function threadCpu(pid: number): Record<string, number> {
  const by = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim();
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      by.set(name, (by.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / TICKS);
    } catch {
      /* the thread ended */
    }
  }
  return Object.fromEntries([...by].filter(([, s]) => s >= 0.05).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, Math.round(v * 100) / 100]));
}

/** Resident set size in bytes. */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

/** Samples RSS every `ms` until stopped; returns the peak. */
export function rssSampler(pid: number, ms = 100): { stop(): number } {
  let peak = rssBytes(pid);
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, rssBytes(pid));
    } catch {
      /* exited */
    }
  }, ms);
  return {
    stop() {
      clearInterval(t);
      try {
        peak = Math.max(peak, rssBytes(pid));
      } catch {
        /* exited */
      }
      return peak;
    },
  };
}
