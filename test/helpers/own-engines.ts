/**
 * Engines of a test's own, on spare loopback ports, for outage tests: the test stops and starts
 * them by their pid and never touches the shared services. PostgreSQL runs as the `postgres` user
 * from a throwaway data directory (initdb with --no-sync: half a second).
 */
import { chownSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Subprocess } from "bun";

/** A free TCP port on 127.0.0.1. */
export function freePort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

/** Resolves once something accepts connections on `port` (or, with `up = false`, once nothing does). */
export async function waitPort(port: number, up = true, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const open = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } }).then(
      (s) => (s.end(), true),
      () => false,
    );
    if (open === up) return;
    if (Date.now() > end) throw new Error(`port ${port} did not ${up ? "open" : "close"} within ${ms} ms`);
    await Bun.sleep(25);
  }
}

/** The pids of a process's children (from /proc; none when it has gone). */
function childPids(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      for (const c of readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").split(" ")) if (c.trim()) out.push(Number(c));
    }
  } catch {
    /* gone already */
  }
  return out;
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    /* gone already */
  }
}

/** True while `pid` runs (a zombie, waiting to be reaped, no longer does). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat[stat.lastIndexOf(")") + 2] !== "Z";
  } catch {
    return false;
  }
}

/** A server process of the test's own that can be stopped and started again on the same port. */
export interface OwnEngine {
  url: string;
  port: number;
  /**
   * Stops it and its children (SIGKILL: an outage, not a goodbye) and waits until the port is
   * closed and the children are gone. @throws Error when a child still runs 10 s later
   */
  stop(): Promise<void>;
  /** Starts it again on the same port (and data) and waits until it accepts connections. */
  start(): Promise<void>;
  /** Stops it for good and removes its files. */
  dispose(): Promise<void>;
}

function own(port: number, url: string, spawn: () => Subprocess, cleanup: () => void = () => {}, ready?: () => Promise<boolean>): OwnEngine {
  let proc: Subprocess | null = null;
  const e: OwnEngine = {
    url,
    port,
    async start() {
      proc = spawn();
      await waitPort(port);
      const end = Date.now() + 10_000;
      while (ready && !(await ready())) {
        if (Date.now() > end) throw new Error(`${url} did not become ready`);
        await Bun.sleep(25);
      }
    },
    async stop() {
      // Its children too: a PostgreSQL backend outlives a killed postmaster for a moment and
      // would go on answering the connections it already has, so the outage would not be one.
      const children = proc ? childPids(proc.pid) : [];
      proc?.kill("SIGKILL");
      for (const pid of children) killQuietly(pid);
      await proc?.exited;
      proc = null;
      await waitPort(port, false);
      const end = Date.now() + 10_000;
      while (children.some(alive)) {
        if (Date.now() > end) throw new Error(`${url}: children ${children.filter(alive).join(", ")} still run 10 s after SIGKILL`);
        await Bun.sleep(5);
      }
    },
    async dispose() {
      if (proc) await e.stop();
      cleanup();
    },
  };
  return e;
}

/** A redis-server of the test's own (nothing kept on disk). */
export async function ownRedis(): Promise<OwnEngine> {
  const port = freePort();
  const e = own(port, `redis://127.0.0.1:${port}`, () =>
    Bun.spawn([Bun.which("redis-server")!, "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdout: "ignore", stderr: "ignore" }),
  );
  await e.start();
  return e;
}

/** A nats-server of the test's own (core NATS, no JetStream). */
export async function ownNats(): Promise<OwnEngine> {
  const port = freePort();
  const e = own(port, `nats://127.0.0.1:${port}`, () => Bun.spawn(["/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", String(port)], { stdout: "ignore", stderr: "ignore" }));
  await e.start();
  return e;
}

/** A PostgreSQL of the test's own, database `postgres`, trust auth, fsync off. */
export async function ownPostgres(): Promise<OwnEngine> {
  const versions = readdirSync("/usr/lib/postgresql").sort();
  const bin = path.join("/usr/lib/postgresql", versions.at(-1)!, "bin");
  const dir = mkdtempSync(path.join(tmpdir(), "dc-own-pg-"));
  chownSync(dir, uid("postgres"), gid("postgres"));
  const data = path.join(dir, "data");
  const init = Bun.spawnSync(["runuser", "-u", "postgres", "--", path.join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"], { stdout: "ignore", stderr: "pipe" });
  if (init.exitCode !== 0) throw new Error(`initdb failed: ${init.stderr.toString()}`);
  const port = freePort();
  const e = own(
    port,
    `postgres://postgres@127.0.0.1:${port}/postgres`,
    () =>
      Bun.spawn(
        ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", path.join(bin, "postgres"), "-D", data, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        { stdout: "ignore", stderr: "ignore" },
      ),
    () => rmSync(dir, { recursive: true, force: true }),
    // After a kill, PostgreSQL replays its WAL before it takes queries (57P03 meanwhile).
    () => Bun.spawnSync(["psql", `postgres://postgres@127.0.0.1:${port}/postgres`, "-tAc", "select 1"], { stdout: "ignore", stderr: "ignore" }).exitCode === 0 ? Promise.resolve(true) : Promise.resolve(false),
  );
  await e.start();
  return e;
}

function uid(user: string): number {
  return Number(Bun.spawnSync(["id", "-u", user]).stdout.toString().trim());
}

function gid(user: string): number {
  return Number(Bun.spawnSync(["id", "-g", user]).stdout.toString().trim());
}
