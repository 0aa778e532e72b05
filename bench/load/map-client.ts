/**
 * One living-map stream client process (spawned by bench/living-map.ts with IPC). It opens
 * sockets on `/living-map/stream` (the project's, or the raw Bun bridge's) and records, for every
 * `{kind:"event"}` frame on every socket, the time from publication on NATS to receipt: the
 * publisher puts its epoch time in µs into the payload as `bench_t`. One string search per frame,
 * no JSON parse, so the client costs as little CPU as it can (it shares the 2 cores with the
 * server, NATS and PostgreSQL).
 */
import { Histogram } from "./hist.ts";

export type MapCommand =
  | { op: "open"; baseWs: string; tokens: string[]; concurrency: number }
  | { op: "reset" }
  | { op: "count" }
  | { op: "report" }
  | { op: "close" };

export interface MapReport {
  op: "report";
  hist: ReturnType<Histogram["toData"]>;
  received: number;
  snapshots: number;
  errors: number;
  closes: number;
  open: number;
}

const MARK = '"bench_t":';
const now = () => performance.timeOrigin + performance.now();

const sockets: WebSocket[] = [];
const hist = new Histogram();
let received = 0;
let snapshots = 0;
let errors = 0;
let closes = 0;
let closing = false;

function onData(data: string): void {
  const i = data.indexOf(MARK);
  if (i < 0) {
    if (data.startsWith('{"kind":"snapshot"')) snapshots++;
    else if (data.includes('"event":"error"')) errors++;
    return;
  }
  const start = i + MARK.length;
  let end = start;
  while (end < data.length && data.charCodeAt(end) !== 44 /* , */ && data.charCodeAt(end) !== 125 /* } */) end++;
  hist.record(now() * 1000 - Number(data.slice(start, end)));
  received++;
}

function openOne(url: string): Promise<WebSocket | null> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let settled = false;
    ws.onopen = () => {
      settled = true;
      resolve(ws);
    };
    ws.onmessage = (ev) => onData(ev.data as string);
    ws.onerror = () => {
      errors++;
      if (!settled) {
        settled = true;
        resolve(null);
      }
    };
    ws.onclose = () => {
      if (!closing) closes++;
    };
  });
}

async function open(c: Extract<MapCommand, { op: "open" }>): Promise<number> {
  let next = 0;
  let opened = 0;
  const worker = async () => {
    while (next < c.tokens.length) {
      const token = c.tokens[next++]!;
      const ws = await openOne(`${c.baseWs}/living-map/stream?token=${token}`);
      if (ws) {
        sockets.push(ws);
        opened++;
      }
    }
  };
  await Promise.all(Array.from({ length: c.concurrency }, worker));
  return opened;
}

process.on("message", async (m: MapCommand) => {
  switch (m.op) {
    case "open":
      return process.send!({ op: "opened", opened: await open(m) });
    case "reset":
      hist.reset();
      received = 0;
      errors = 0;
      closes = 0;
      return process.send!({ op: "reset" });
    case "count":
      return process.send!({ op: "count", received });
    case "report":
      return process.send!({
        op: "report", hist: hist.toData(), received, snapshots, errors, closes, open: sockets.filter((s) => s.readyState === WebSocket.OPEN).length,
      } satisfies MapReport);
    case "close":
      closing = true;
      for (const s of sockets) s.close();
      setTimeout(() => process.exit(0), 200);
      return;
  }
});
process.send!({ op: "hello" });
