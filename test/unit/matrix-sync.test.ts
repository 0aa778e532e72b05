/**
 * The Matrix sync loop and its aggregation (src/modules/matrix/{sync-loop,aggregator}.ts) against
 * the fake homeserver (a real HTTP server): initial and incremental sync, presence and typing per
 * room, every error case of the Matrix brief, resuming from a saved `next_batch`. Backoff waits run
 * on fake time: the loop's `sleep` is a ManualClock timer, so a test sees each wait and advances it.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { ManualClock } from "../../src/clock.ts";
import { MatrixAggregator, personOf, type AggregateChanges } from "../../src/modules/matrix/aggregator.ts";
import { localpartToken } from "../../src/modules/matrix/service.ts";
import { BACKOFF_MAX_MS, MatrixSyncLoop, retryAfter, TIGHT_LOOP_LIMIT, type RoomMapping } from "../../src/modules/matrix/sync-loop.ts";
import { FakeHomeserver } from "../helpers/fake-homeserver.ts";

const BOT = "@bot:city.test";
const GEN = "!gen:city.test";
const ROOM = "room_city_general";

interface Harness {
  hs: FakeHomeserver;
  loop: MatrixSyncLoop;
  clock: ManualClock;
  /** Every wait the loop asked for, ms. */
  sleeps: number[];
  saved: string[];
  /** The next changes report (waits for it). */
  next(): Promise<AggregateChanges>;
  /** Resolves once the loop is waiting (its `n`th wait). */
  waiting(n: number): Promise<void>;
}

const open: Harness[] = [];
afterEach(async () => {
  for (const h of open.splice(0)) {
    await h.loop.stop();
    h.hs.stop();
  }
});

function harness(opts: { token?: string | null; password?: string; since?: string | null; rooms?: RoomMapping[]; random?: number; setup?: (hs: FakeHomeserver) => void } = {}): Harness {
  const hs = new FakeHomeserver().start();
  hs.addUser(BOT, { token: "bot-token", password: "pw" });
  hs.createRoom(GEN, "#city_general:city.test");
  hs.join(GEN, BOT);
  opts.setup?.(hs);
  const clock = new ManualClock();
  const sleeps: number[] = [];
  const sleepWaiters: (() => void)[] = [];
  const queue: AggregateChanges[] = [];
  const changeWaiters: ((c: AggregateChanges) => void)[] = [];
  const saved: string[] = [];
  const loop = new MatrixSyncLoop({
    hsUrl: hs.url, userId: BOT, accessToken: opts.token === undefined ? "bot-token" : opts.token, password: opts.password ?? null, deviceId: "TEST",
    syncTimeoutMs: 5000, since: opts.since ?? null, rooms: opts.rooms ?? [{ roomId: ROOM, matrixRoomId: GEN, alias: null }],
    now: () => clock.now(), random: () => opts.random ?? 0,
    sleep: (ms, signal) =>
      new Promise<void>((resolve) => {
        sleeps.push(ms);
        const t = clock.after(ms, resolve);
        signal.addEventListener("abort", () => (t.cancel(), resolve()));
        for (const w of sleepWaiters.splice(0)) w();
      }),
    onSince: (b) => saved.push(b),
    onChanges: (c) => {
      const w = changeWaiters.shift();
      if (w) w(c);
      else queue.push(c);
    },
  });
  const h: Harness = {
    hs, loop, clock, sleeps, saved,
    next: () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((r) => changeWaiters.push(r))),
    waiting: async (n) => {
      while (sleeps.length < n) await new Promise<void>((r) => sleepWaiters.push(r));
    },
  };
  open.push(h);
  void loop.start();
  return h;
}

const pairs = (list: { roomId: string; person: string }[]) => list.map((x) => `${x.roomId} ${x.person}`).sort();

describe("Matrix sync loop (fake homeserver)", () => {
  test("initial sync: online members of tracked rooms, the bot left out, a city user matched by localpart; then changes", async () => {
    const h = harness({
      setup: (hs) => {
        hs.createRoom("!other:city.test");
        hs.join("!other:city.test", BOT);
        for (const u of ["@alice:city.test", "@u_bob:city.test", "@idle:city.test", "@u_eve:elsewhere.test"]) hs.join(GEN, u);
        hs.join("!other:city.test", "@zed:city.test");
        hs.setPresence("@alice:city.test", "online");
        hs.setPresence("@u_bob:city.test", "org.matrix.msc3026.busy");
        hs.setPresence("@idle:city.test", "unavailable");
        hs.setPresence("@u_eve:elsewhere.test", "online");
        hs.setPresence("@zed:city.test", "online"); // in an untracked room
        hs.setPresence(BOT, "online");
      },
    });
    const first = await h.next();
    expect(first.full).toBe(true);
    expect(pairs(first.online)).toEqual([`${ROOM} @alice:city.test`, `${ROOM} @u_eve:elsewhere.test`, `${ROOM} u_bob`]);
    expect(h.hs.syncQueries[0]!.get("set_presence")).toBe("offline");
    expect(h.hs.syncQueries[0]!.get("timeout")).toBe("0");
    expect(h.hs.syncQueries[0]!.has("since")).toBe(false);
    expect(h.saved).toEqual([h.hs.currentBatch()]);

    h.hs.join(GEN, "@carol:city.test");
    h.hs.setPresence("@carol:city.test", "online");
    h.hs.setPresence("@alice:city.test", "offline");
    let c = await h.next();
    while (!c.online.length && !c.offline.length) c = await h.next();
    const all = { online: pairs(c.online), offline: pairs(c.offline) };
    // The two may arrive in one response or two.
    if (!all.offline.length) all.offline = pairs((await h.next()).offline);
    expect(all).toEqual({ online: [`${ROOM} @carol:city.test`], offline: [`${ROOM} @alice:city.test`] });
    expect(h.hs.syncQueries.at(-1)!.get("timeout")).toBe("5000");
    expect(h.hs.syncQueries.at(-1)!.get("since")).not.toBeNull();
  });

  test("typing lists replace (never merge), the bot is left out; receipts are activity, but not in the initial sync", async () => {
    const h = harness({
      setup: (hs) => {
        hs.join(GEN, "@alice:city.test");
        hs.receipt(GEN, "@alice:city.test", 1_000);
      },
    });
    const first = await h.next();
    expect(first.activity.size).toBe(0);
    h.hs.setTyping(GEN, ["@alice:city.test", BOT, "@u_bob:city.test"]);
    expect((await h.next()).typing).toEqual(new Map([[ROOM, ["@alice:city.test", "u_bob"]]]));
    h.hs.setTyping(GEN, ["@u_bob:city.test"]);
    expect((await h.next()).typing).toEqual(new Map([[ROOM, ["u_bob"]]]));
    h.hs.setTyping(GEN, []);
    expect((await h.next()).typing).toEqual(new Map([[ROOM, []]]));
    h.hs.receipt(GEN, "@alice:city.test", 1_732_610_000_000);
    expect((await h.next()).activity).toEqual(new Map([[ROOM, 1_732_610_000_000]]));
  });

  test("user presence changes of tracked users only, with last_active_ts from last_active_ago", async () => {
    const h = harness({ setup: (hs) => hs.join(GEN, "@alice:city.test") });
    await h.next();
    h.hs.setPresence("@stranger:city.test", "online");
    h.hs.setPresence("@alice:city.test", "online", 2_000);
    let c = await h.next();
    while (!c.users.length) c = await h.next();
    expect(c.users).toEqual([{ matrix_user_id: "@alice:city.test", status: "online", last_active_ts: h.clock.now() - 2_000 }]);
  });

  test("a homeserver without presence: presence stays unknown (never a confident 0); it turns ok with the first presence", async () => {
    const h = harness({
      setup: (hs) => {
        hs.presenceEnabled = false;
        hs.join(GEN, "@alice:city.test");
        hs.setPresence("@alice:city.test", "online");
      },
    });
    expect((await h.next()).online).toEqual([]);
    expect(h.loop.status().presence).toBe("unknown");
    h.hs.presenceEnabled = true;
    h.hs.setPresence("@alice:city.test", "online");
    let c = await h.next();
    while (!c.online.length) c = await h.next();
    expect(h.loop.status().presence).toBe("ok");
  });

  test("401 without a password: the token is never used again and the loop stops (no busy loop)", async () => {
    const h = harness({ token: "revoked" });
    await h.loop.start();
    expect(h.loop.status().state).toBe("unauthorized");
    // One filter upload got the 401; nothing after it.
    expect(h.hs.requests).toEqual({ sync: 0, filter: 0, login: 0, directory: 0, members: 0 });
    expect(h.loop.requests.filter + h.loop.requests.sync).toBe(1);
    expect(h.loop.status().errors.unauthorized).toBe(1);
  });

  test("401 with a password: one login with the fixed device id, then syncing goes on; a refused login stops", async () => {
    const h = harness({ token: "revoked", password: "pw", setup: (hs) => hs.join(GEN, "@alice:city.test") });
    await h.next();
    expect(h.loop.requests.login).toBe(1);
    expect(h.loop.status().state).toBe("syncing");

    const bad = harness({ token: null, password: "wrong" });
    await bad.loop.start();
    expect(bad.loop.status().state).toBe("unauthorized");
    expect(bad.hs.requests.login).toBe(1);
    expect(bad.hs.requests.sync).toBe(0);
  });

  test("429: waits Retry-After (seconds), then retry_after_ms when there is no header", async () => {
    const h = harness();
    await h.next();
    h.hs.failSyncs(1, 429, { errcode: "M_LIMIT_EXCEEDED", error: "Too many requests", retry_after_ms: 2_500 }, { "retry-after": "7" });
    h.hs.failSyncs(1, 429, { errcode: "M_LIMIT_EXCEEDED", error: "Too many requests", retry_after_ms: 2_500 });
    h.hs.setPresence("@x:city.test", "online"); // wake the long poll
    await h.waiting(1);
    expect(h.sleeps).toEqual([7_000]);
    const syncs = h.hs.requests.sync;
    await h.clock.advance(6_999);
    expect(h.hs.requests.sync).toBe(syncs);
    await h.clock.advance(1);
    await h.waiting(2);
    expect(h.sleeps).toEqual([7_000, 2_500]);
    expect(h.loop.status().errors.rate_limited).toBe(2);
    expect(retryAfter(new Date(Date.UTC(2026, 0, 1, 0, 0, 30)).toUTCString(), undefined, Date.UTC(2026, 0, 1))).toBe(30_000);
  });

  test("5xx and network errors: exponential backoff with jitter from 1 s, capped at 60 s; a success resets it", async () => {
    const h = harness({ random: 0.999 });
    await h.next();
    h.hs.failSyncs(8, 502, { errcode: "M_UNKNOWN", error: "bad gateway" });
    h.hs.setPresence("@x:city.test", "online");
    for (let i = 1; i <= 8; i++) {
      await h.waiting(i);
      await h.clock.advance(h.sleeps[i - 1]!);
    }
    // × (0.5 + 0.999 / 2): just under each base.
    expect(h.sleeps.map((ms) => Math.round(ms / 1000))).toEqual([1, 2, 4, 8, 16, 32, 60, 60]);
    expect(Math.max(...h.sleeps)).toBeLessThanOrEqual(BACKOFF_MAX_MS);
    expect(h.loop.status().errors.server).toBe(8);
    await h.next();
    h.hs.failSyncs(1, 500, {});
    h.hs.setPresence("@y:city.test", "online");
    await h.waiting(9);
    expect(Math.round(h.sleeps[8]! / 1000)).toBe(1);
  });

  test("400 on a stale since: the token is dropped and an initial sync follows; a saved since resumes with full_state", async () => {
    const stale = harness({ since: "s999999", setup: (hs) => hs.join(GEN, "@alice:city.test") });
    const c = await stale.next();
    expect(c.full).toBe(true);
    expect(stale.hs.syncQueries.map((q) => q.get("since"))).toEqual(["s999999", null]);
    expect(stale.loop.status().errors.bad_request).toBe(1);

    const resume = harness({ setup: (hs) => hs.join(GEN, "@alice:city.test") });
    await resume.next();
    resume.hs.setPresence("@alice:city.test", "online");
    await resume.next();
    await resume.loop.stop();
    const saved = resume.saved.at(-1)!;
    const before = resume.hs.syncQueries.length;
    // A restart: a new loop with the saved next_batch; alice's change came before it, so only a
    // full_state sync (the presence snapshot) still shows her online.
    const got: AggregateChanges[] = [];
    const l = new MatrixSyncLoop({
      hsUrl: resume.hs.url, userId: BOT, accessToken: "bot-token", password: null, deviceId: "TEST", syncTimeoutMs: 5000, since: saved,
      rooms: [{ roomId: ROOM, matrixRoomId: GEN, alias: null }], now: () => 0, random: () => 0, sleep: async () => {}, onSince: () => {},
      onChanges: (ch) => void got.push(ch),
    });
    void l.start();
    while (!got.length) await Bun.sleep(5);
    await l.stop();
    const q = resume.hs.syncQueries[before]!;
    expect([q.get("since"), q.get("full_state")]).toEqual([saved, "true"]);
    expect(pairs(got[0]!.online)).toEqual([`${ROOM} @alice:city.test`]);
  });

  test("an unknown filter id: the filter is uploaded again", async () => {
    const h = harness();
    await h.next();
    expect(h.hs.requests.filter).toBe(1);
    h.hs.forgetFilters();
    h.hs.setPresence("@x:city.test", "online");
    await h.next();
    expect(h.hs.requests.filter).toBe(2);
    expect(h.loop.status().errors.unknown_filter).toBe(1);
  });

  test("the same empty next_batch again and again: backoff after a few (tight-loop guard)", async () => {
    const h = harness();
    await h.next();
    h.hs.stickNextBatch(h.hs.currentBatch());
    h.hs.setPresence("@x:city.test", "online"); // the first incremental sync is answered stuck
    await h.waiting(1);
    expect(h.loop.status().errors.tight_loop).toBe(1);
    expect(h.hs.requests.sync).toBe(1 + TIGHT_LOOP_LIMIT);
  });

  test("a limited timeline re-reads the room's members (a join inside the gap is not lost)", async () => {
    const h = harness();
    await h.next();
    h.hs.limitNext(GEN);
    h.hs.setPresence("@dan:city.test", "online");
    h.hs.join(GEN, "@dan:city.test"); // left out of the limited timeline
    let c = await h.next();
    while (!c.online.length) c = await h.next();
    expect(h.hs.requests.members).toBe(1);
    expect(pairs(c.online)).toEqual([`${ROOM} @dan:city.test`]);
  });

  test("aliases resolve through the directory; an unknown alias is not tracked; a room the bot left is dropped", async () => {
    const h = harness({
      rooms: [
        { roomId: ROOM, matrixRoomId: null, alias: "#city_general:city.test" },
        { roomId: "room_city_nowhere", matrixRoomId: null, alias: "#city_nowhere:city.test" },
      ],
      setup: (hs) => {
        hs.join(GEN, "@alice:city.test");
        hs.setPresence("@alice:city.test", "online");
      },
    });
    expect(pairs((await h.next()).online)).toEqual([`${ROOM} @alice:city.test`]);
    expect(h.loop.status().rooms).toBe(1);
    expect(h.loop.status().errors.alias).toBe(1);
    h.hs.leave(GEN, BOT);
    let c = await h.next();
    while (!c.leftRooms.length) c = await h.next();
    expect(c.leftRooms).toEqual([GEN]);
    expect(pairs(c.offline)).toEqual([`${ROOM} @alice:city.test`]);
  });
});

describe("Matrix aggregation rules", () => {
  test("personOf: only the bot's own server's u_ localparts are city users", () => {
    expect(personOf("@u_alice:city.test", "city.test")).toBe("u_alice");
    expect(personOf("@u_alice:evil.test", "city.test")).toBe("@u_alice:evil.test");
    expect(personOf("@alice:city.test", "city.test")).toBe("@alice:city.test");
  });

  test("a localpart is one NATS subject token", () => {
    expect(localpartToken("@john.doe:hs")).toBe("john=2edoe");
    expect(localpartToken("@a*b>c=d:hs")).toBe("a=2ab=3ec=3dd");
    expect(localpartToken("@user_1-x:hs")).toBe("user_1-x");
  });

  test("a full sync replaces presence: users it does not mention are offline", () => {
    const a = new MatrixAggregator(BOT, [{ roomId: ROOM, matrixRoomId: GEN }]);
    const state = { state: { events: [{ type: "m.room.member", state_key: "@a:hs", content: { membership: "join" } }] } };
    a.apply({ next_batch: "1", presence: { events: [{ type: "m.presence", sender: "@a:hs", content: { presence: "online" } }] }, rooms: { join: { [GEN]: state } } }, true, 0);
    expect([...(a.onlineByRoom().get(ROOM) ?? [])]).toEqual(["@a:hs"]);
    const c = a.apply({ next_batch: "2", rooms: { join: { [GEN]: state } } }, true, 0);
    expect(pairs(c.offline)).toEqual([`${ROOM} @a:hs`]);
    expect(a.onlineByRoom().get(ROOM)).toBeUndefined();
  });
});
