/**
 * One city across instances, end to end: three compiled binaries on one PostgreSQL, Redis and NATS
 * (SPEC "Realtime guarantees"). Senders on all three into one room; every receiver everywhere gets
 * every message once, in the same seq order; recovery on another instance; presence frames once.
 * SIGKILL of an instance is in instances-killed.test.ts, a NATS outage in nats-outage.test.ts.
 */
import { describe, expect, test } from "bun:test";
import type { RunningBinary } from "../helpers/binary.ts";
import { TestSocket } from "../helpers/city.ts";
import { contiguous, lastSeq, post, ready, ROOM, seqs, useThreeInstances, workDir } from "../helpers/instances.ts";

const work = workDir();

describe.skipIf(!ready)("three instances on one PostgreSQL, Redis and NATS", () => {
  const { runs, open, token } = useThreeInstances(work);

  test("senders on all three: every receiver on every instance gets every message once, in the same seq order", async () => {
    const receivers = [];
    for (const run of runs) for (let k = 0; k < 2; k++) receivers.push(await open(run, `/ws/city/rooms/${ROOM}`));
    const senders = await Promise.all(runs.map((run, i) => open(run, `/ws/city/rooms/${ROOM}?token=${token(`u_sender${i}`)}`)));
    const start = (await lastSeq(runs[0]!)) + 1;
    const N = 150;
    for (let i = 0; i < N; i++) for (const [j, s] of senders.entries()) s.send({ event: "room.message.send", body: `s${j}-${i}` });
    const total = N * senders.length;
    for (const r of [...receivers, ...senders]) await r.until(() => seqs(r).length >= total, 15_000);
    const reference = receivers[0]!.frames.filter((f) => f.event === "room.message").map((f) => f.message.id);
    for (const r of [...receivers, ...senders]) {
      contiguous(seqs(r), start, start + total - 1);
      expect(r.frames.filter((f) => f.event === "room.message").map((f) => f.message.id)).toEqual(reference);
    }
    // each sender's own messages kept their order
    for (let j = 0; j < senders.length; j++) {
      const mine = receivers[0]!.frames.filter((f) => f.event === "room.message" && f.message.body.startsWith(`s${j}-`)).map((f) => f.message.body);
      expect(mine).toEqual(Array.from({ length: N }, (_, i) => `s${j}-${i}`));
    }
  }, 60_000);

  test("a receiver that leaves instance A and comes back on C with since misses nothing and repeats nothing", async () => {
    const [a, b, c] = runs as [RunningBinary, RunningBinary, RunningBinary];
    const onA = await open(a, `/ws/city/rooms/${ROOM}`);
    await post(b, token("u_w1"), "before");
    await onA.next((f) => f.event === "room.message" && f.message.body === "before", 5000);
    const last = seqs(onA).at(-1)!;
    onA.close();
    await onA.waitClosed();
    let writing = true;
    const writers = [b, c].map(async (run, i) => {
      let n = 0;
      while (writing && n < 60) await post(run, token(`u_w${i}`), `during ${i}.${n++}`);
    });
    await Bun.sleep(30);
    const onC = await open(c, `/ws/city/rooms/${ROOM}?since=${last}`);
    await Bun.sleep(200);
    writing = false;
    await Promise.all(writers);
    await post(a, token("u_w1"), "after");
    const end = await lastSeq(a);
    await onC.until(() => seqs(onC).at(-1) === end, 10_000);
    contiguous(seqs(onC), last + 1, end);
    expect(onC.frames.filter((f) => f.event === "error")).toEqual([]);
  }, 60_000);

  test("presence frames arrive once on every instance, whichever instances the user is on", async () => {
    const room = "room_city_science";
    const user = "u_everywhere";
    const watchers = await Promise.all(runs.map((r) => open(r, `/ws/city/rooms/${room}`)));
    const presenceWatchers = await Promise.all(runs.map((r, i) => open(r, `/ws/city/presence?token=${token(`u_pw${i}`)}`)));
    for (const p of presenceWatchers) await p.next((f) => f.type === "snapshot");
    // the user holds the room on A and B, and heartbeats on B and C
    const held = [await open(runs[0]!, `/ws/city/rooms/${room}?token=${token(user)}`), await open(runs[1]!, `/ws/city/rooms/${room}?token=${token(user)}`)];
    const beats = [await open(runs[1]!, `/ws/city/presence?token=${token(user)}`), await open(runs[2]!, `/ws/city/presence?token=${token(user)}`)];
    for (const b of beats) {
      await b.next((f) => f.type === "snapshot");
      b.send({ event: "presence.heartbeat", user_id: user });
    }
    const mine = (s: TestSocket, pred: (f: any) => boolean) => s.frames.filter((f) => f.user_id === user && pred(f));
    for (const w of watchers) await w.next((f) => f.event === "room.presence" && f.user_id === user && f.status === "online", 5000);
    for (const p of presenceWatchers) await p.next((f) => f.event === "presence.update" && f.user_id === user, 5000);
    for (const w of presenceWatchers) await w.next((f) => f.type === "room.presence" && f.room_slug === "science" && f.online_count >= 1, 5000);
    // now both holds go: one room.leave per watcher
    for (const h of held) h.close();
    for (const w of watchers) await w.next((f) => f.event === "room.leave" && f.user_id === user, 5000);
    // a sentinel through every instance's stream: whatever else was coming has arrived
    expect((await post(runs[0]!, token("u_sentinel"), "sentinel", room)).status).toBe(201);
    for (const w of watchers) await w.next((f) => f.event === "room.message" && f.message.body === "sentinel", 5000);
    const presenceOf = (w: TestSocket) => mine(w, (f) => f.event === "room.presence").map((f) => f.status);
    for (const w of watchers) {
      expect(mine(w, (f) => f.event === "room.join").length).toBe(1);
      expect(mine(w, (f) => f.event === "room.leave").length).toBe(1);
      // `online` for the join, and again for the user's online transition when it named this room
      // (a first heartbeat written in the same flush as the first hold names none); `offline` for
      // the leave. Each event once: every watcher, on whichever instance, sees the same frames.
      expect(presenceOf(w).filter((x) => x === "offline")).toEqual(["offline"]);
      expect([1, 2]).toContain(presenceOf(w).filter((x) => x === "online").length);
      expect(presenceOf(w)).toEqual(presenceOf(watchers[0]!));
    }
    for (const p of presenceWatchers) expect(mine(p, (f) => f.event === "presence.update")).toEqual([{ event: "presence.update", user_id: user, status: "online" }]);
  }, 60_000);
});

// Kills one of its three: instances of its own, so the other tests never meet a dead one.
