/**
 * Starting city instances in-process for tests (on port 0, in a temp DATA_DIR), signing tokens
 * for them, and small WebSocket helpers.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { signToken } from "../../src/auth/tokens.ts";
import type { ManualClock } from "../../src/clock.ts";
import { startCity, type CityInstance, type StartOptions } from "../../src/bootstrap.ts";
import { loadConfig, type Config } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { deleteLivingMapStream } from "./engines.ts";

export const TEST_SECRET = "test-secret-0123456789-abcdefghijklmnop";

/** A config for tests: a temp DATA_DIR (unless `env` names one), a fixed JWT secret, quiet logs, overridden by `env`. */
export function testConfig(env: Record<string, string> = {}): { config: Config; cleanup: () => void } {
  // A DATA_DIR in `env` is the caller's to remove; only one made here is removed by `cleanup`.
  const dir = env.DATA_DIR === undefined ? mkdtempSync(path.join(tmpdir(), "dc-city-")) : null;
  const config = loadConfig({ ...(dir ? { DATA_DIR: dir } : {}), JWT_SECRET: TEST_SECRET, LOG_LEVEL: "error", HOST: "127.0.0.1", ...env });
  return { config, cleanup: () => dir && rmSync(dir, { recursive: true, force: true }) };
}

export interface TestCity extends CityInstance {
  config: Config;
  wsUrl(pathAndQuery: string): string;
  token(userId: string, ttlSeconds?: number): Promise<string>;
  /** `fetch` against the instance with an optional bearer token. */
  http(pathAndQuery: string, init?: RequestInit & { token?: string; json?: unknown }): Promise<Response>;
  dispose(): Promise<void>;
}

/** Starts a city on a free port; `dispose()` stops it and removes its DATA_DIR (unless `keepDir`). */
export async function startTestCity(env: Record<string, string> = {}, opts: Partial<StartOptions> & { config?: Config } = {}): Promise<TestCity> {
  const made = opts.config ? { config: opts.config, cleanup: () => {} } : testConfig(env);
  const city = await startCity(made.config, { log: silentLogger, port: 0, ...opts });
  const secret = made.config.jwtSecret ?? TEST_SECRET;
  return Object.assign(city, {
    config: made.config,
    wsUrl: (p: string) => city.url.replace("http", "ws") + p,
    token: (userId: string, ttl = 3600) => signToken(secret, userId, ttl),
    http: (p: string, init: RequestInit & { token?: string; json?: unknown } = {}) => {
      const headers = new Headers(init.headers);
      if (init.token) headers.set("authorization", `Bearer ${init.token}`);
      let body = init.body;
      if (init.json !== undefined) {
        headers.set("content-type", "application/json");
        body = JSON.stringify(init.json);
      }
      return fetch(city.url + p, { ...init, headers, body });
    },
    dispose: async () => {
      await city.stop();
      made.cleanup();
      // The living map's JetStream stream of this prefix (a test prefix is never shared with a real city).
      const c = made.config;
      if (c.natsUrl && c.natsSubjectPrefix && c.livingMapJetstream === "auto") await deleteLivingMapStream(c.natsUrl, c.natsSubjectPrefix);
    },
  });
}

/** A client socket that records every frame, with waits on what arrives. */
export class TestSocket {
  readonly frames: any[] = [];
  closed: { code: number; reason: string } | null = null;
  private waiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.addEventListener("message", (e) => {
      this.frames.push(JSON.parse(String(e.data)));
      this.wake();
    });
    ws.addEventListener("close", (e) => {
      this.closed = { code: e.code, reason: e.reason };
      this.wake();
    });
  }

  /** Opens a socket; rejects with the HTTP status when the upgrade is refused. */
  static open(url: string, headers?: Record<string, string>): Promise<TestSocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, headers ? ({ headers } as unknown as string[]) : undefined);
      const s = new TestSocket(ws);
      ws.addEventListener("open", () => resolve(s), { once: true });
      ws.addEventListener("error", () => reject(new Error(`ws open failed: ${url}`)), { once: true });
    });
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Waits for the first recorded frame (from index `from`) matching `pred`. */
  async next(pred: (f: any) => boolean, ms = 3000, from = 0): Promise<any> {
    const end = Date.now() + ms;
    for (;;) {
      const hit = this.frames.slice(from).find(pred);
      if (hit) return hit;
      if (Date.now() > end) throw new Error(`no matching frame within ${ms} ms; got ${JSON.stringify(this.frames).slice(0, 500)}`);
      await this.waitAny(end - Date.now());
    }
  }

  /** Waits until `pred()` holds. */
  async until(pred: () => boolean, ms = 3000): Promise<void> {
    const end = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > end) throw new Error(`condition not met within ${ms} ms; frames ${JSON.stringify(this.frames).slice(0, 500)}`);
      await this.waitAny(end - Date.now());
    }
  }

  /** Waits for the close event. */
  async waitClosed(ms = 3000): Promise<{ code: number; reason: string }> {
    await this.until(() => this.closed !== null, ms);
    return this.closed!;
  }

  close(): void {
    this.ws.close();
  }

  private waitAny(ms: number): Promise<void> {
    return new Promise((r) => {
      const t = setTimeout(r, Math.max(1, Math.min(ms, 50)));
      this.waiters.push(() => {
        clearTimeout(t);
        r();
      });
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}

/** Upgrade attempt that returns the refusal (status and JSON body) instead of a socket. */
export async function refusedUpgrade(httpUrl: string, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(httpUrl, {
    headers: { upgrade: "websocket", connection: "Upgrade", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13", ...headers },
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

/** Polls `fn` until it returns a value `accept`s (default: truthy), or throws after `ms`. */
export async function waitFor<T>(fn: () => Promise<T> | T, accept: (v: T) => boolean = Boolean, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  let last: T;
  for (;;) {
    last = await fn();
    if (accept(last)) return last;
    if (Date.now() > end) throw new Error(`waitFor: condition not met within ${ms} ms; last value ${JSON.stringify(last)}`);
    await Bun.sleep(20);
  }
}

/**
 * Resolves once the server has read every frame sent on `s` so far: a frame that is not JSON is
 * answered (`invalid_frame`) after them, on the room and presence sockets alike.
 */
export async function serverRead(s: TestSocket): Promise<void> {
  const from = s.frames.length;
  s.send("sentinel: not json");
  await s.next((f) => f.event === "error" && f.code === "invalid_frame", 3000, from);
}

/**
 * Moves fake time on `stepMs` at a time, each step ending with every city's presence sweep done
 * (on Redis a sweep is real I/O: the timers of one long advance would find the first still
 * running and skip theirs).
 */
export async function advanceSweeping(clock: ManualClock, cities: TestCity[], ms: number, stepMs: number): Promise<void> {
  for (let left = ms; left > 0; left -= stepMs) {
    await clock.advance(Math.min(stepMs, left));
    for (const c of cities) await c.presence.sweep();
  }
}

/** Opens a presence socket for `userId`, sends one heartbeat and waits for the snapshot. */
export async function heartbeating(city: TestCity, userId: string): Promise<TestSocket> {
  const s = await TestSocket.open(city.wsUrl(`/ws/city/presence?token=${await city.token(userId)}`));
  await s.next((f) => f.type === "snapshot");
  s.send({ event: "presence.heartbeat", user_id: userId });
  return s;
}

/** {@link heartbeating}, then waits until the server read the heartbeat and writes it (a flush): for tests on fake time. */
export async function heartbeatWritten(city: TestCity, userId: string): Promise<TestSocket> {
  const s = await heartbeating(city, userId);
  await serverRead(s);
  await city.presence.flush();
  return s;
}

/** `members_online` of a room as GET /city/rooms reports it. */
export async function membersOnline(city: TestCity, roomId: string): Promise<number> {
  const rooms = (await (await city.http("/city/rooms")).json()) as { id: string; members_online: number }[];
  return rooms.find((r) => r.id === roomId)!.members_online;
}
