/**
 * One load-client process (spawned by bench/run.ts with IPC). It opens sockets to one server in
 * that server's protocol (the project's, the raw Bun peer's, or Socket.IO v4 over WebSocket),
 * publishes timestamped messages at a fixed rate (open loop) or with a fixed window (closed
 * loop), and records the publish-to-receive latency of every delivery on every receiving socket.
 *
 * Per delivery it does a string search, never a JSON parse, so the client costs as little CPU as
 * it can: on this 2-core machine the clients and the server share the cores.
 */
import { Histogram } from "./hist.ts";

export type ServerKind = "project" | "raw" | "socketio";

export interface SocketPlan {
  room: string;
  role: "recv" | "pub";
  token?: string;
}

export type Command =
  | {
      op: "open";
      kind: ServerKind;
      baseWs: string;
      sockets: SocketPlan[];
      concurrency: number;
      /**
       * Bytes the project's delivered `room.message` frame adds to a body. The peers forward what
       * the publisher sends, so their frames are padded to deliver as many bytes per message.
       */
      deliveredOverhead: number;
    }
  | { op: "reset" }
  | { op: "publish"; durationMs: number; ratePerPublisher?: number; window?: number }
  | { op: "report" }
  | { op: "count" }
  /** Frames of any kind received so far (join announcements too). */
  | { op: "frames" }
  | { op: "close" };

export interface Report {
  op: "report";
  hist: ReturnType<Histogram["toData"]>;
  /** Publishers' latency to their own message's echo: the server's share, without receiver queueing. */
  echo: ReturnType<Histogram["toData"]>;
  received: Record<string, number>;
  errors: number;
  errorCodes: Record<string, number>;
  closes: number;
  open: number;
}

const MARK = '"body":"bench:';
const now = () => performance.timeOrigin + performance.now(); // epoch ms with µs precision

interface Conn {
  ws: WebSocket;
  plan: SocketPlan;
  /** Publisher index, unique across processes (set from the plan order and the process id). */
  pubIdx: number;
  sent: number;
  inFlight: number;
  ready: boolean;
}

const proc = Number(process.env.BENCH_CLIENT_ID ?? 0);
const conns: Conn[] = [];
const hist = new Histogram();
const echo = new Histogram();
let received: Record<string, number> = {};
let errors = 0;
let errorCodes: Record<string, number> = {};
let closes = 0;
let running = false;
let kind: ServerKind = "project";
let windowSize = 0;

let deliveredOverhead = 0;

/** The publisher's frame; for the peers, padded so the frame they deliver is as long as the project's. */
function frameFor(room: string, body: string): string {
  if (kind === "project") return `{"event":"room.message.send","room_id":${JSON.stringify(room)},"body":"${body}"}`;
  const target = body.length + deliveredOverhead;
  if (kind === "socketio") {
    // delivered: 42["room.message",{…}] is 5 bytes shorter than the 42["room.message.send",{…}] sent
    const bare = `42["room.message",{"room_id":${JSON.stringify(room)},"body":"${body}","pad":""}]`;
    return `42["room.message.send",{"room_id":${JSON.stringify(room)},"body":"${body}","pad":"${"x".repeat(Math.max(0, target - bare.length))}"}]`;
  }
  const bare = `{"event":"room.message.send","room_id":${JSON.stringify(room)},"body":"${body}","pad":""}`;
  return `{"event":"room.message.send","room_id":${JSON.stringify(room)},"body":"${body}","pad":"${"x".repeat(Math.max(0, target - bare.length))}"}`;
}

function send(c: Conn): void {
  const body = `bench:${c.pubIdx}:${c.sent}:${Math.round(now() * 1000)}`;
  c.sent++;
  c.inFlight++;
  c.ws.send(frameFor(c.plan.room, body));
}

/** Every frame received, of any kind (the bench waits for it to stop moving before it measures). */
let frames = 0;

function onData(c: Conn, data: string): void {
  frames++;
  if (kind === "socketio") {
    if (data === "2") return void c.ws.send("3");
    if (data.startsWith("0")) return void c.ws.send("40");
    if (data.startsWith("40")) {
      c.ws.send(`42["join",${JSON.stringify(c.plan.room)}]`);
      c.ready = true;
      return;
    }
  }
  const i = data.indexOf(MARK);
  if (i < 0) {
    if (data.includes('"event":"error"')) {
      errors++;
      const m = /"code":"([^"]+)"/.exec(data);
      const code = m ? m[1]! : "?";
      errorCodes[code] = (errorCodes[code] ?? 0) + 1;
    }
    return;
  }
  const start = i + MARK.length;
  const end = data.indexOf('"', start);
  const body = data.slice(start, end);
  const a = body.indexOf(":");
  const b = body.indexOf(":", a + 1);
  const pubIdx = Number(body.slice(0, a));
  const sentUs = Number(body.slice(b + 1));
  if (c.plan.role === "recv") {
    hist.record(now() * 1000 - sentUs);
    received[c.plan.room] = (received[c.plan.room] ?? 0) + 1;
  } else if (pubIdx === c.pubIdx) {
    echo.record(now() * 1000 - sentUs);
    c.inFlight--;
    if (running && windowSize > 0) send(c);
  }
}

function openOne(baseWs: string, plan: SocketPlan, pubIdx: number): Promise<Conn | null> {
  let url: string;
  if (kind === "socketio") url = `${baseWs}/socket.io/?EIO=4&transport=websocket`;
  else url = `${baseWs}/ws/city/rooms/${plan.room}${plan.token ? `?token=${plan.token}` : ""}`;
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const c: Conn = { ws, plan, pubIdx, sent: 0, inFlight: 0, ready: kind !== "socketio" };
    let settled = false;
    const timer = setTimeout(() => done(null), 20_000);
    const done = (v: Conn | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(v);
    };
    ws.onmessage = (e) => {
      onData(c, e.data as string);
      if (c.ready) done(c);
    };
    ws.onopen = () => {
      if (c.ready) done(c);
    };
    ws.onerror = () => done(null);
    ws.onclose = () => {
      if (settled) closes++;
      done(null);
    };
  });
}

async function open(cmd: Extract<Command, { op: "open" }>): Promise<{ ok: number; failed: number; ms: number }> {
  kind = cmd.kind;
  deliveredOverhead = cmd.deliveredOverhead;
  const t0 = performance.now();
  let next = 0;
  let ok = 0;
  let failed = 0;
  let pubCount = 0;
  const worker = async () => {
    while (next < cmd.sockets.length) {
      const plan = cmd.sockets[next++]!;
      const pubIdx = plan.role === "pub" ? proc * 100_000 + pubCount++ : -1;
      const c = await openOne(cmd.baseWs, plan, pubIdx);
      if (c) {
        conns.push(c);
        ok++;
      } else failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(cmd.concurrency, cmd.sockets.length) }, worker));
  return { ok, failed, ms: performance.now() - t0 };
}

async function publish(cmd: Extract<Command, { op: "publish" }>): Promise<Record<string, number>> {
  const pubs = conns.filter((c) => c.plan.role === "pub");
  for (const c of pubs) {
    c.sent = 0;
    c.inFlight = 0;
  }
  running = true;
  windowSize = cmd.window ?? 0;
  const t0 = performance.now();
  if (windowSize > 0) {
    for (const c of pubs) for (let i = 0; i < windowSize; i++) send(c);
    await Bun.sleep(cmd.durationMs);
  } else {
    const rate = cmd.ratePerPublisher ?? 1;
    // Spread publishers over the tick so they do not all fire at once.
    await new Promise<void>((resolve) => {
      const tick = setInterval(() => {
        const elapsed = performance.now() - t0;
        if (elapsed >= cmd.durationMs) {
          clearInterval(tick);
          resolve();
          return;
        }
        const due = Math.floor((rate * elapsed) / 1000);
        for (const c of pubs) {
          let n = due - c.sent;
          if (n > 1000) n = 1000;
          while (n-- > 0) send(c);
        }
      }, 2);
    });
  }
  running = false;
  const sent: Record<string, number> = {};
  for (const c of pubs) sent[c.plan.room] = (sent[c.plan.room] ?? 0) + c.sent;
  return sent;
}

process.on("message", async (cmd: Command) => {
  switch (cmd.op) {
    case "open":
      process.send!({ op: "opened", ...(await open(cmd)) });
      break;
    case "reset":
      hist.reset();
      echo.reset();
      received = {};
      errors = 0;
      errorCodes = {};
      closes = 0;
      process.send!({ op: "reset" });
      break;
    case "publish":
      process.send!({ op: "published", sent: await publish(cmd) });
      break;
    case "report":
      process.send!({
        op: "report", hist: hist.toData(), echo: echo.toData(), received, errors, errorCodes, closes,
        open: conns.filter((c) => c.ws.readyState === WebSocket.OPEN).length,
      } satisfies Report);
      break;
    case "frames":
      process.send!({ op: "frames", frames });
      break;
    case "count": {
      let n = 0;
      for (const k in received) n += received[k]!;
      process.send!({ op: "count", received: n, errors });
      break;
    }
    case "close":
      for (const c of conns) c.ws.close();
      await Bun.sleep(200);
      process.exit(0);
  }
});
process.send!({ op: "hello" });
