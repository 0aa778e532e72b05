/**
 * The compiled executable for end-to-end tests: built once per source tree with the package's own
 * `build` script (cached in the temp directory by a hash of src/, migrations/ and package.json, so
 * several e2e files share one build), then started as real processes on port 0.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Subprocess } from "bun";

const root = path.join(import.meta.dir, "../..");

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else out.push(p);
  }
  return out.sort();
}

let built: string | null = null;

/** A build for other sources is removed once it is this old, ms (each is ~130 MB; a run that uses one lasts minutes). */
const STALE_BUILD_MS = 3600_000;

/** Removes the cached builds of other source trees older than {@link STALE_BUILD_MS}. */
function pruneStaleBuilds(keep: string): void {
  for (const name of readdirSync(tmpdir())) {
    if (!name.startsWith("dc-binary-")) continue;
    const dir = path.join(tmpdir(), name);
    if (dir === keep) continue;
    try {
      if (Date.now() - statSync(dir).mtimeMs > STALE_BUILD_MS) rmSync(dir, { recursive: true, force: true });
    } catch {
      /* another run removed it first */
    }
  }
}

let cachedPath: string | null = null;

/** Where the compiled binary for the current sources is cached (it may not be built yet); the sources are hashed once per process. */
export function cachedBinaryPath(): string {
  if (cachedPath) return cachedPath;
  const hasher = new Bun.CryptoHasher("sha256");
  for (const f of [...sources(path.join(root, "src")), ...sources(path.join(root, "migrations")), path.join(root, "package.json")]) {
    hasher.update(f.slice(root.length));
    hasher.update(readFileSync(f));
  }
  cachedPath = path.join(tmpdir(), `dc-binary-${hasher.digest("hex").slice(0, 16)}`, "daarion-city");
  return cachedPath;
}

/** Path of the compiled binary for the current sources (builds it when missing). */
export function compiledBinary(): string {
  if (built) return built;
  const binary = cachedBinaryPath();
  const dir = path.dirname(binary);
  if (!existsSync(binary)) {
    mkdirSync(dir, { recursive: true });
    const script: string = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")).scripts.build;
    const tmp = path.join(dir, `daarion-city.${process.pid}`);
    // Run as the shell would (the script quotes its --define), writing to our own file.
    const build = Bun.spawnSync(["sh", "-c", script.replace("--outfile dist/daarion-city", `--outfile '${tmp}'`)], { cwd: root, stderr: "pipe", stdout: "pipe" });
    if (build.exitCode !== 0) throw new Error(`build failed: ${build.stderr.toString()}`);
    // Atomic: a concurrent run never starts a half-written file.
    renameSync(tmp, binary);
    pruneStaleBuilds(dir);
  }
  built = binary;
  return binary;
}

export interface RunningBinary {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  url: string;
  wsUrl: string;
  /** Every JSON log line so far (stdout and stderr). */
  lines: string[];
  /** The working directory startBinary made itself (none given): {@link stopBinary} removes it. */
  ownDir?: string;
  env: Record<string, string>;
}

/**
 * Starts the binary with `env` in a fresh working directory and waits for its "listening" line.
 * @throws Error when it exits first or does not listen within 15 s (it is killed before the throw)
 */
export async function startBinary(env: Record<string, string>, given?: string): Promise<RunningBinary> {
  const binary = compiledBinary();
  const workDir = given ?? mkdtempSync(path.join(tmpdir(), "dc-bin-"));
  const cwd = mkdtempSync(path.join(workDir, "cwd-"));
  const fullEnv = { PATH: process.env.PATH ?? "", PORT: "0", HOST: "127.0.0.1", ...env };
  const proc = Bun.spawn([binary, "serve"], { cwd, env: fullEnv, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const lines: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>, onLine: (l: string) => void) => {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of stream) {
      buf += decoder.decode(chunk);
      const parts = buf.split("\n");
      buf = parts.pop()!;
      for (const p of parts) if (p) onLine(p);
    }
  };
  const listening = Promise.withResolvers<string>();
  void pump(proc.stdout, (l) => {
    lines.push(l);
    try {
      const j = JSON.parse(l);
      if (j.msg === "city: listening") listening.resolve(j.url);
    } catch {
      /* not JSON */
    }
  });
  void pump(proc.stderr, (l) => lines.push(l));
  void proc.exited.then((code) => listening.reject(new Error(`binary exited with ${code} before listening:\n${lines.join("\n")}`)));
  const timer = setTimeout(() => listening.reject(new Error(`binary did not start within 15 s:\n${lines.join("\n")}`)), 15_000);
  try {
    const url = await listening.promise;
    return { proc, url, wsUrl: url.replace("http", "ws"), lines, env: fullEnv, ...(given === undefined ? { ownDir: workDir } : {}) };
  } catch (err) {
    // One that never listened is nobody's to stop: it must not outlive the failed start.
    proc.kill("SIGKILL");
    await proc.exited;
    if (given === undefined) rmSync(workDir, { recursive: true, force: true });
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** A bearer token from the binary's own `token` command (HS256 with the env's JWT_SECRET). */
export function binaryToken(env: Record<string, string>, user: string): string {
  const out = Bun.spawnSync([compiledBinary(), "token", user], { env: { PATH: process.env.PATH ?? "", ...env }, stdout: "pipe", stderr: "pipe" });
  if (out.exitCode !== 0) throw new Error(out.stderr.toString());
  return out.stdout.toString().trim();
}

/** SIGTERM and the exit code, with how long the stop took; removes the working directory startBinary made. */
export async function stopBinary(r: RunningBinary, signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<{ code: number | null; ms: number }> {
  const t0 = Date.now();
  r.proc.kill(signal);
  const code = await r.proc.exited;
  const ms = Date.now() - t0;
  if (r.ownDir) rmSync(r.ownDir, { recursive: true, force: true });
  return { code, ms };
}
