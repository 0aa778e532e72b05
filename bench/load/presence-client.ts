/**
 * One presence load-client process (spawned by bench/heartbeat.ts with IPC). It opens presence
 * sockets and heartbeats on them at a fixed interval, or runs probes: users who have never beaten
 * send their first heartbeat while an observer socket times the `presence.update` online it causes.
 */
import { Histogram } from "./hist.ts";
import { encodeClientFrame, openRawWs, type RawWs } from "./raw-ws.ts";

export type PresenceCommand =
  | { op: "open"; baseWs: string; users: { id: string; token: string }[]; concurrency: number }
  /** `framesPerWrite` heartbeats go out in one write, every `framesPerWrite` intervals (default 1). */
  | { op: "beat"; durationMs: number; intervalMs: number; framesPerWrite?: number }
  /** One heartbeat from every socket (brings every user online before measuring). */
  | { op: "warm" }
  /** Opens the observer and the probe users' sockets (before the measured window). */
  | { op: "probeOpen"; baseWs: string; observerToken: string; probes: { id: string; token: string }[] }
  /** Each opened probe sends its first heartbeat, one every `everyMs`; answers the histogram. */
  | { op: "probe"; everyMs: number }
  | { op: "close" };

const now = () => performance.timeOrigin + performance.now();
/** The beating sockets: raw TCP WebSockets, each with its heartbeat frame encoded once. */
const sockets: { ws: RawWs; user: string; beat: Uint8Array }[] = [];

function openOne(url: string, onFrame?: (data: string) => void): Promise<WebSocket | null> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    let done = false;
    const finish = (v: WebSocket | null) => {
      if (!done) {
        done = true;
        resolve(v);
      }
    };
    ws.onmessage = (e) => {
      const data = e.data as string;
      if (data.startsWith('{"type":"snapshot"')) finish(ws);
      onFrame?.(data);
    };
    ws.onerror = () => finish(null);
    ws.onclose = () => finish(null);
    setTimeout(() => finish(null), 20_000);
  });
}

async function open(cmd: Extract<PresenceCommand, { op: "open" }>) {
  const t0 = performance.now();
  let next = 0;
  let failed = 0;
  const worker = async () => {
    while (next < cmd.users.length) {
      const u = cmd.users[next++]!;
      // counts only: the mass of beating sockets does not listen for every user's transition
      const ws = await openRawWs(`${cmd.baseWs}/ws/city/presence?events=counts&token=${u.token}`);
      if (ws) sockets.push({ ws, user: u.id, beat: encodeClientFrame(`{"event":"presence.heartbeat","user_id":"${u.id}"}`) });
      else failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(cmd.concurrency, cmd.users.length) }, worker));
  return { ok: sockets.length, failed, ms: performance.now() - t0 };
}

/**
 * Every socket beats once per interval, phases spread evenly over the interval. With
 * `framesPerWrite` k > 1 a socket writes k heartbeat frames at once every k intervals (the same
 * frame rate for the server to read and answer frame by frame, at 1/k of this process's writes).
 */
async function beat(cmd: Extract<PresenceCommand, { op: "beat" }>) {
  const n = sockets.length;
  const k = Math.max(1, cmd.framesPerWrite ?? 1);
  const writes = sockets.map((s) => {
    const out = new Uint8Array(s.beat.length * k);
    for (let i = 0; i < k; i++) out.set(s.beat, i * s.beat.length);
    return out;
  });
  let sent = 0;
  let due = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const elapsed = performance.now() - t0;
      if (elapsed >= cmd.durationMs) {
        clearInterval(tick);
        resolve();
        return;
      }
      // writes due so far across all sockets, at n per k intervals
      const until = Math.floor((elapsed / (cmd.intervalMs * k)) * n);
      for (; due < until; due++) {
        const i = due % n;
        if (sockets[i]!.ws.send(writes[i]!)) sent += k;
      }
    }, 2);
  });
  const cpu = process.cpuUsage(cpu0);
  return { sent, cpu_s: (cpu.user + cpu.system) / 1e6, seconds: (performance.now() - t0) / 1000 };
}

/** The probe run: its observer, its users' sockets, and what the observer has timed so far. */
const probing = { hist: new Histogram(), sentAt: new Map<string, number>(), seen: 0, observer: null as WebSocket | null, probes: [] as { ws: WebSocket; id: string }[] };

/** Opens the observer (timing each probe's `presence.update` online) and the probes' sockets. */
async function probeOpen(cmd: Extract<PresenceCommand, { op: "probeOpen" }>) {
  probing.observer = await openOne(`${cmd.baseWs}/ws/city/presence?token=${cmd.observerToken}`, (data) => {
    if (!data.startsWith('{"event":"presence.update"')) return;
    const m = /"user_id":"([^"]+)","status":"online"/.exec(data);
    const t = m && probing.sentAt.get(m[1]!);
    if (t !== undefined && t !== null) {
      probing.hist.record((now() - t) * 1000);
      probing.sentAt.delete(m![1]!);
      probing.seen++;
    }
  });
  for (const p of cmd.probes) {
    const ws = await openOne(`${cmd.baseWs}/ws/city/presence?events=counts&token=${p.token}`);
    if (ws) probing.probes.push({ ws, id: p.id });
  }
  return { opened: probing.probes.length, observer: probing.observer !== null };
}

/** First heartbeats of the opened probes, one every `everyMs`, timed to the observer's presence.update. */
async function probe(cmd: Extract<PresenceCommand, { op: "probe" }>) {
  const { probes } = probing;
  for (const p of probes) {
    probing.sentAt.set(p.id, now());
    p.ws.send(`{"event":"presence.heartbeat","user_id":"${p.id}"}`);
    await Bun.sleep(cmd.everyMs);
  }
  const end = Date.now() + 3000;
  while (probing.seen < probes.length && Date.now() < end) await Bun.sleep(20);
  probing.observer?.close();
  for (const p of probes) p.ws.close();
  return { hist: probing.hist.toData(), sent: probes.length, seen: probing.seen };
}

process.on("message", async (cmd: PresenceCommand) => {
  switch (cmd.op) {
    case "open":
      process.send!({ op: "opened", ...(await open(cmd)) });
      break;
    case "beat":
      process.send!({ op: "beaten", ...(await beat(cmd)) });
      break;
    case "warm":
      for (const s of sockets) s.ws.send(s.beat);
      process.send!({ op: "warmed", sent: sockets.length });
      break;
    case "probeOpen":
      process.send!({ op: "probeOpened", ...(await probeOpen(cmd)) });
      break;
    case "probe":
      process.send!({ op: "probed", ...(await probe(cmd)) });
      break;
    case "close":
      for (const s of sockets) s.ws.close();
      await Bun.sleep(200);
      process.exit(0);
  }
});
process.send!({ op: "hello" });
