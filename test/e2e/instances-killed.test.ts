/**
 * One city across instances, end to end: SIGKILL of one of three binaries under load loses no
 * acknowledged message, and its users go offline once, within the TTL.
 */
import { describe, expect, test } from "bun:test";
import { waitFor } from "../helpers/city.ts";
import { post, ready, ROOM, useThreeInstances, workDir } from "../helpers/instances.ts";

const work = workDir();

/** An instance's `daarion_city_presence_expiry_sweeps_total` (expiry script calls so far). */
async function expirySweeps(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = /^daarion_city_presence_expiry_sweeps_total (\d+)$/m.exec(text);
  if (!m) throw new Error("no daarion_city_presence_expiry_sweeps_total in /metrics");
  return Number(m[1]);
}

describe.skipIf(!ready)("three instances: one killed", () => {
  const { runs, open, token } = useThreeInstances(work);

  test("SIGKILL of an instance under load loses no acknowledged message; its users go offline once, within the TTL", async () => {
    const victim = runs[1]!;
    const user = "u_on_victim";
    const watcher = await open(runs[0]!, `/ws/city/presence?token=${token("u_kill_watch")}`);
    await watcher.next((f) => f.type === "snapshot");
    const beat = await open(victim, `/ws/city/presence?token=${token(user)}`);
    await beat.next((f) => f.type === "snapshot");
    beat.send({ event: "presence.heartbeat", user_id: user });
    await watcher.next((f) => f.event === "presence.update" && f.user_id === user && f.status === "online", 5000);
    const acked: number[] = [];
    let writing = true;
    const writers = Array.from({ length: 4 }, async (_, i) => {
      while (writing) {
        const r = await post(victim, token(`u_load${i}`), `load ${i}`);
        if (r.status === 201) acked.push(r.seq!);
        else if (r.status === 0) return; // the process is gone
      }
    });
    // Kill it mid-stream, once enough writes were acknowledged (a count, not a time: a loaded machine is slower).
    await waitFor(() => acked.length, (n) => n > 20, 20_000);
    const killedAt = Date.now();
    victim.proc.kill("SIGKILL");
    await victim.proc.exited;
    writing = false;
    await Promise.all(writers);
    expect(acked.length).toBeGreaterThan(20);
    // every acknowledged message is in the store, as another instance reads it
    const stored = new Set<number>();
    let before: number | undefined;
    for (;;) {
      const q = before === undefined ? "limit=200" : `limit=200&before=${before}`;
      const page = (await (await fetch(`${runs[0]!.url}/city/rooms/${ROOM}/messages?${q}`)).json()) as { seq: number }[];
      for (const m of page) stored.add(m.seq);
      if (page.length < 200 || page[0]!.seq <= Math.min(...acked)) break;
      before = page[0]!.seq;
    }
    expect(acked.filter((s) => !stored.has(s))).toEqual([]);
    const offline = await watcher.next((f) => f.event === "presence.update" && f.user_id === user && f.status === "offline", 8000);
    expect(offline).toBeTruthy();
    expect(Date.now() - killedAt).toBeLessThan(3000 + 200 + 1500);
    // Nothing more for that user, proved by sentinels rather than a pause: on each surviving
    // instance, once a whole expiry call has started after the offline arrived (its sweep counter
    // moved twice; a sweep reports what it expired in the same turn it counts the call), a sentinel
    // user's online is published there, after anything that sweep reported; the watcher's instance
    // hands both on in order.
    for (const [i, run] of [runs[0]!, runs[2]!].entries()) {
      const at = await expirySweeps(run.url);
      await waitFor(() => expirySweeps(run.url), (n) => n >= at + 2, 10_000);
      const sentinel = `u_kill_sentinel${i}`;
      const s = await open(run, `/ws/city/presence?token=${token(sentinel)}`);
      await s.next((f) => f.type === "snapshot");
      s.send({ event: "presence.heartbeat", user_id: sentinel });
      await watcher.next((f) => f.event === "presence.update" && f.user_id === sentinel && f.status === "online", 5000);
    }
    expect(watcher.frames.filter((f) => f.event === "presence.update" && f.user_id === user).map((f) => f.status)).toEqual(["online", "offline"]);
  }, 60_000);
});

