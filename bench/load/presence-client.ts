/**
 * One presence load-client process (spawned by bench/heartbeat.ts with IPC). It opens presence
 * sockets and heartbeats on them at a fixed interval, or runs probes: users who have never beaten
 * send their first heartbeat while an observer socket times the `presence.update` online it causes.
 */
import { Histogram } from "./hist.ts";

export type PresenceCommand =
  | { op: "open"; baseWs: string; users: { id: string; token: string }[]; concurrency: number }
  | { op: "beat"; durationMs: number; intervalMs: number }
  /** One heartbeat from every socket (brings every user online before measuring). */
  | { op: "warm" }
  | { op: "probe"; baseWs: string; observerToken: string; probes: { id: string; token: string }[]; everyMs: number }
  | { op: "close" };

const now = () => performance.timeOrigin + performance.now();
const sockets: { ws: WebSocket; user: string }[] = [];

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
      const ws = await openOne(`${cmd.baseWs}/ws/city/presence?events=counts&token=${u.token}`);
      if (ws) sockets.push({ ws, user: u.id });
      else failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(cmd.concurrency, cmd.users.length) }, worker));
  return { ok: sockets.length, failed, ms: performance.now() - t0 };
}

/** Every socket beats once per interval, phases spread evenly over the interval. */
async function beat(cmd: Extract<PresenceCommand, { op: "beat" }>) {
  const n = sockets.length;
  const frames = sockets.map((s) => `{"event":"presence.heartbeat","user_id":"${s.user}"}`);
  let sent = 0;
  const t0 = performance.now();
  await new Promise<void>((resolve) => {
    const tick = setInterval(() => {
      const elapsed = performance.now() - t0;
      if (elapsed >= cmd.durationMs) {
        clearInterval(tick);
        resolve();
        return;
      }
      // beats due so far across all sockets, at n per interval
      const due = Math.floor((elapsed / cmd.intervalMs) * n);
      while (sent < due) {
        const i = sent % n;
        sockets[i]!.ws.send(frames[i]!);
        sent++;
      }
    }, 2);
  });
  return { sent, seconds: (performance.now() - t0) / 1000 };
}

/** First heartbeats of fresh users, one every `everyMs`, timed to the observer's presence.update. */
async function probe(cmd: Extract<PresenceCommand, { op: "probe" }>) {
  const hist = new Histogram();
  const sentAt = new Map<string, number>();
  let seen = 0;
  const observer = await openOne(`${cmd.baseWs}/ws/city/presence?token=${cmd.observerToken}`, (data) => {
    if (!data.startsWith('{"event":"presence.update"')) return;
    const m = /"user_id":"([^"]+)","status":"online"/.exec(data);
    const t = m && sentAt.get(m[1]!);
    if (t !== undefined && t !== null) {
      hist.record((now() - t) * 1000);
      sentAt.delete(m![1]!);
      seen++;
    }
  });
  const probes: { ws: WebSocket; id: string }[] = [];
  for (const p of cmd.probes) {
    const ws = await openOne(`${cmd.baseWs}/ws/city/presence?events=counts&token=${p.token}`);
    if (ws) probes.push({ ws, id: p.id });
  }
  for (const p of probes) {
    sentAt.set(p.id, now());
    p.ws.send(`{"event":"presence.heartbeat","user_id":"${p.id}"}`);
    await Bun.sleep(cmd.everyMs);
  }
  const end = Date.now() + 3000;
  while (seen < probes.length && Date.now() < end) await Bun.sleep(20);
  observer?.close();
  for (const p of probes) p.ws.close();
  return { hist: hist.toData(), sent: probes.length, seen };
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
      for (const s of sockets) s.ws.send(`{"event":"presence.heartbeat","user_id":"${s.user}"}`);
      process.send!({ op: "warmed", sent: sockets.length });
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
