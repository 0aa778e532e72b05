/**
 * A load-client child process driven over IPC: one request, one reply, in order.
 */
import path from "node:path";

export class ClientProc<Cmd extends { op: string }> {
  private readonly waiting: ((m: any) => void)[] = [];
  private readonly proc;

  private constructor(script: string, id: number, ready: (p: ClientProc<Cmd>) => void) {
    this.proc = Bun.spawn(["bun", path.join(import.meta.dir, script)], {
      env: { ...process.env, BENCH_CLIENT_ID: String(id) },
      stdout: "inherit",
      stderr: "inherit",
      serialization: "json",
      ipc: (m: any) => {
        if (m.op === "hello") return ready(this);
        this.waiting.shift()?.(m);
      },
    });
  }

  /** Spawns `bench/load/<script>` and waits for its hello. */
  static start<C extends { op: string }>(script: string, id: number): Promise<ClientProc<C>> {
    return new Promise((resolve) => new ClientProc<C>(script, id, resolve));
  }

  call<T = any>(cmd: Cmd): Promise<T> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.proc.send(cmd);
    });
  }

  /** Asks the client to close its sockets and exit; kills it after 3 s. */
  async close(): Promise<void> {
    this.proc.send({ op: "close" });
    const t = setTimeout(() => this.proc.kill("SIGKILL"), 3000);
    await this.proc.exited;
    clearTimeout(t);
  }
}

/**
 * Waits until the clients together report `expected` deliveries (`count`), or nothing more has
 * arrived for `idleMs`, or `maxMs` passed.
 * @returns what they had received, and when (performance.now(), ms) the count last moved
 */
export async function drain(
  clients: ClientProc<{ op: string }>[],
  expected: number,
  o: { maxMs: number; idleMs: number },
): Promise<{ received: number; lastChange: number }> {
  let last = -1;
  let lastChange = performance.now();
  const end = performance.now() + o.maxMs;
  for (;;) {
    const counts = await Promise.all(clients.map((c) => c.call<{ received: number }>({ op: "count" })));
    const got = counts.reduce((a, c) => a + c.received, 0);
    if (got !== last) {
      last = got;
      lastChange = performance.now();
    }
    if (got >= expected || performance.now() > end || performance.now() - lastChange > o.idleMs) return { received: got, lastChange };
    await Bun.sleep(50);
  }
}

/**
 * Waits until no client has received a frame of any kind for `stillMs` (or `maxMs` passed): what
 * a server still sends after the connects (the project's join announcements) is over.
 * @returns how long it waited, ms
 */
export async function quiet(clients: ClientProc<{ op: string }>[], o: { stillMs: number; maxMs: number }): Promise<number> {
  const t0 = performance.now();
  let last = -1;
  let lastChange = t0;
  for (;;) {
    const counts = await Promise.all(clients.map((c) => c.call<{ frames: number }>({ op: "frames" })));
    const got = counts.reduce((a, c) => a + c.frames, 0);
    const now = performance.now();
    if (got !== last) {
      last = got;
      lastChange = now;
    }
    if (now - lastChange >= o.stillMs || now - t0 > o.maxMs) return Math.round(now - t0);
    await Bun.sleep(25);
  }
}
