/**
 * One city across instances, end to end: SIGKILL of one of three binaries under load loses no
 * acknowledged message, and its users go offline once, within the TTL.
 */
import { describe, expect, test } from "bun:test";
import { waitFor } from "../helpers/city.ts";
import { post, ready, ROOM, useThreeInstances, workDir } from "../helpers/instances.ts";

const work = workDir();

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
    await Bun.sleep(500);
    expect(watcher.frames.filter((f) => f.event === "presence.update" && f.user_id === user).map((f) => f.status)).toEqual(["online", "offline"]);
  }, 60_000);
});

