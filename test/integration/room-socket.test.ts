/**
 * Room sockets against a real listening server (port 0), on the embedded store and, when
 * DATABASE_URL is set, on PostgreSQL: fan-out, acknowledgement, membership, recovery, bad frames.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { storeVariants } from "../helpers/engines.ts";
import { ManualClock } from "../../src/clock.ts";
import { heartbeating, membersOnline, refusedUpgrade, serverRead, startTestCity, TestSocket, waitFor, type TestCity } from "../helpers/city.ts";

const variants = storeVariants("room sockets");

const GENERAL = "room_city_general";

for (const variant of variants) {
  describe(`room sockets (${variant.name})`, () => {
    let city: TestCity;
    let drop: () => Promise<void>;
    let alice: string;
    let bob: string;
    const sockets: TestSocket[] = [];
    const open = async (path: string) => {
      const s = await TestSocket.open(city.wsUrl(path));
      sockets.push(s);
      return s;
    };
    const messageCount = async (roomId = GENERAL) => ((await (await city.http(`/city/rooms/${roomId}/messages?limit=200`)).json()) as unknown[]).length;

    beforeAll(async () => {
      const made = await variant.env();
      drop = made.drop;
      city = await startTestCity({
        ...made.env, CITY_WRITE_RATE_PER_SECOND: "0", ROOM_RECOVERY_MAX_MESSAGES: "50", PRESENCE_SWEEP_MS: "100", PRESENCE_FLUSH_MS: "5", ROOM_PRESENCE_THROTTLE_MS: "50",
      });
      alice = await city.token("u_alice");
      bob = await city.token("u_bob");
    });
    afterAll(async () => {
      for (const s of sockets) s.close();
      await city.dispose();
      await drop();
    });

    test("a message sent on one socket reaches the others in the seed's shape and is stored", async () => {
      const a = await open(`/ws/city/rooms/${GENERAL}?token=${alice}`);
      const b = await open(`/ws/city/rooms/${GENERAL}?token=${bob}`);
      const anon = await open(`/ws/city/rooms/${GENERAL}`);
      a.send({ event: "room.message.send", room_id: GENERAL, body: "  Привіт місто!  " });
      const got = await b.next((f) => f.event === "room.message");
      expect(Object.keys(got).sort()).toEqual(["event", "message", "room_id"]);
      expect(got.room_id).toBe(GENERAL);
      expect(Object.keys(got.message)).toEqual(["id", "seq", "author_user_id", "author_agent_id", "body", "created_at"]);
      expect(Number.isInteger(got.message.seq) && got.message.seq > 1).toBe(true);
      expect(got.message).toMatchObject({ author_user_id: "u_alice", author_agent_id: null, body: "Привіт місто!" });
      expect(got.message.id).toMatch(/^m_city_[0-9A-HJKMNP-TV-Z]{26}$/);
      // the sender's acknowledgement is the same publication; anonymous readers get it too
      expect((await a.next((f) => f.event === "room.message")).message.id).toBe(got.message.id);
      expect((await anon.next((f) => f.event === "room.message")).message.id).toBe(got.message.id);
      const detail = (await (await city.http(`/city/rooms/${GENERAL}`)).json()) as any;
      expect(detail.messages.at(-1)).toEqual({ ...got.message, room_id: GENERAL });
      const feed = (await (await city.http(`/city/feed?limit=1`)).json()) as any[];
      expect(feed[0]).toMatchObject({ kind: "room_message", room_id: GENERAL, user_id: "u_alice", payload: { body: "Привіт місто!", message_id: got.message.id } });
    });

    test("HTTP POST takes the same path: 201 with the message, room.message on the sockets", async () => {
      const s = await open(`/ws/city/rooms/${GENERAL}`);
      const res = await city.http(`/city/rooms/${GENERAL}/messages`, { method: "POST", token: bob, json: { body: "from http" } });
      expect(res.status).toBe(201);
      const m = (await res.json()) as any;
      const got = await s.next((f) => f.event === "room.message" && f.message.id === m.id);
      expect({ ...got.message, room_id: got.room_id }).toEqual(m);
    });

    test("per room, every socket sees messages in id order", async () => {
      const readers = await Promise.all([open(`/ws/city/rooms/${GENERAL}`), open(`/ws/city/rooms/${GENERAL}`)]);
      const w1 = await open(`/ws/city/rooms/${GENERAL}?token=${alice}`);
      const w2 = await open(`/ws/city/rooms/${GENERAL}?token=${bob}`);
      for (let i = 0; i < 40; i++) {
        w1.send({ event: "room.message.send", body: `a${i}` });
        w2.send({ event: "room.message.send", body: `b${i}` });
        if (i % 10 === 0) await city.http(`/city/rooms/${GENERAL}/messages`, { method: "POST", token: alice, json: { body: `h${i}` } });
      }
      for (const r of readers) {
        await r.until(() => r.frames.filter((f) => f.event === "room.message").length >= 84);
        const ids = r.frames.filter((f) => f.event === "room.message").map((f) => f.message.id);
        expect(ids).toEqual([...ids].sort());
        expect(new Set(ids).size).toBe(ids.length);
      }
      expect(readers[0]!.frames.filter((f) => f.event === "room.message").map((f) => f.message.id)).toEqual(
        readers[1]!.frames.filter((f) => f.event === "room.message").map((f) => f.message.id),
      );
    });

    test("room.join / room.leave announce a user's first and last socket; members_online counts users who hold a socket and heartbeat", async () => {
      const room = "room_city_science";
      const watcher = await open(`/ws/city/rooms/${room}`);
      expect(await membersOnline(city, room)).toBe(0);
      const b1 = await open(`/ws/city/rooms/${room}?token=${bob}`);
      expect(await watcher.next((f) => f.event === "room.join")).toEqual({ event: "room.join", room_id: room, user_id: "u_bob" });
      expect(await watcher.next((f) => f.event === "room.presence")).toEqual({ event: "room.presence", room_id: room, user_id: "u_bob", status: "online" });
      const b2 = await open(`/ws/city/rooms/${room}?token=${bob}`);
      // Holding a socket is not enough: the user must heartbeat. (bob's hold is in the store: his
      // room.join above came from the flush that wrote it.)
      expect(await membersOnline(city, room)).toBe(0);
      const beat = await heartbeating(city, "u_bob");
      sockets.push(beat);
      expect(await waitFor(() => membersOnline(city, room), (n) => n === 1)).toBe(1);
      expect(((await (await city.http(`/city/rooms/${room}`)).json()) as any).members_online).toBe(1);
      b1.close();
      await b1.waitClosed();
      // Not a leave while b2 is still in: whatever b1's release caused is announced by this flush,
      // and b2's typing frame goes out after it on the same stream (a sentinel, not a sleep).
      await city.presence.flush();
      b2.send({ event: "room.typing", room_id: room });
      await watcher.next((f) => f.event === "room.typing" && f.user_id === "u_bob");
      expect(watcher.frames.filter((f) => f.event === "room.leave")).toEqual([]);
      b2.send({ event: "room.leave", room_id: room });
      expect(await watcher.next((f) => f.event === "room.leave")).toEqual({ event: "room.leave", room_id: room, user_id: "u_bob" });
      expect(await watcher.next((f) => f.event === "room.presence" && f.status === "offline")).toEqual({ event: "room.presence", room_id: room, user_id: "u_bob", status: "offline" });
      expect(await waitFor(() => membersOnline(city, room), (n) => n === 0)).toBe(0);
      // out of the room: no live messages; the sender still gets its acknowledgement
      b2.send({ event: "room.message.send", body: "while out" });
      const ack = await b2.next((f) => f.event === "room.message");
      expect(ack.message.body).toBe("while out");
      b2.send({ event: "room.join", room_id: room });
      await watcher.next((f) => f.event === "room.join", 3000, watcher.frames.findIndex((f) => f.event === "room.leave"));
      expect(await waitFor(() => membersOnline(city, room), (n) => n === 1)).toBe(1);
      expect(watcher.frames.filter((f) => f.event === "room.join").length).toBe(2);
    });

    test("room.typing tells the room and counts in typing_count until it lapses", async () => {
      const room = "room_city_welcome";
      const watcher = await open(`/ws/city/rooms/${room}`);
      const presenceWatcher = await heartbeating(city, "u_watcher");
      sockets.push(presenceWatcher);
      const typer = await open(`/ws/city/rooms/${room}?token=${alice}`);
      typer.send({ event: "room.typing", room_id: room });
      typer.send({ event: "room.typing", room_id: room }); // within 2 s: counted, not announced again
      expect(await watcher.next((f) => f.event === "room.typing")).toEqual({ event: "room.typing", room_id: room, user_id: "u_alice" });
      const counts = await presenceWatcher.next((f) => f.type === "room.presence" && f.room_slug === "welcome" && f.typing_count === 1);
      expect(counts).toEqual({ type: "room.presence", room_slug: "welcome", online_count: 0, typing_count: 1 });
      // Sentinel: the typer's next frame publishes after the typing frames were handled, in order
      // on the same topic, so a second announcement would have reached the watcher before it.
      typer.send({ event: "room.message.send", room_id: room, body: "typing sentinel" });
      await watcher.next((f) => f.event === "room.message" && f.message.body === "typing sentinel");
      expect(watcher.frames.filter((f) => f.event === "room.typing").length).toBe(1);
      const anon = await open(`/ws/city/rooms/${room}`);
      anon.send({ event: "room.typing", room_id: room });
      expect((await anon.next((f) => f.event === "error")).code).toBe("unauthorized");
    });

    test("HTTP join/leave announce to the room and need a token", async () => {
      const room = "room_city_energy";
      const s = await open(`/ws/city/rooms/${room}`);
      expect((await city.http(`/city/rooms/${room}/join`, { method: "POST" })).status).toBe(401);
      const res = await city.http(`/city/rooms/${room}/join`, { method: "POST", token: alice });
      expect(await res.json()).toEqual({ ok: true, room_id: room, user_id: "u_alice", announced: true });
      expect(await s.next((f) => f.event === "room.join")).toEqual({ event: "room.join", room_id: room, user_id: "u_alice" });
      await city.http(`/city/rooms/${room}/leave`, { method: "POST", token: alice });
      expect(await s.next((f) => f.event === "room.leave")).toEqual({ event: "room.leave", room_id: room, user_id: "u_alice" });
      expect((await city.http(`/city/rooms/room_city_nope/join`, { method: "POST", token: alice })).status).toBe(404);
    });

    test("recovery: reconnecting with since replays what was missed, in order, then goes live without gaps or duplicates", async () => {
      const room = "room_city_builders";
      const first = await open(`/ws/city/rooms/${room}?token=${alice}`);
      first.send({ event: "room.message.send", body: "before the break" });
      const last = (await first.next((f) => f.event === "room.message")).message.id;
      first.close();
      await first.waitClosed();
      for (let i = 0; i < 5; i++) await city.http(`/city/rooms/${room}/messages`, { method: "POST", token: bob, json: { body: `missed ${i}` } });
      // keep writing while the socket reconnects, so some messages race the replay. The writer is
      // bounded (LIVE_MAX): together with the 5 missed ones everything after the cursor fits in
      // one page of history and under ROOM_RECOVERY_MAX_MESSAGES (50), however fast it runs.
      const LIVE_MAX = 40;
      let writing = true;
      let n = 0;
      const writer = (async () => {
        while (writing && n < LIVE_MAX) await city.http(`/city/rooms/${room}/messages`, { method: "POST", token: bob, json: { body: `live ${n++}` } });
      })();
      await waitFor(() => n, (k) => k >= 1); // the writer is under way before the reconnect
      const again = await open(`/ws/city/rooms/${room}?token=${alice}&since=${last}`);
      const startedBeforeOpen = n;
      // Writing goes on until the socket has had a message written after it opened (or the writer
      // reached its bound): writes then raced the replay, whatever the machine's speed.
      await again.until(() => again.frames.filter((f) => f.event === "room.message").length > 5 + startedBeforeOpen || n >= LIVE_MAX, 10_000);
      writing = false;
      await writer;
      const stored = ((await (await city.http(`/city/rooms/${room}/messages?limit=200`)).json()) as any[]).map((m) => m.id);
      expect(stored).toContain(last);
      const expected = stored.slice(stored.indexOf(last) + 1);
      expect(expected.length).toBe(5 + n);
      await again.until(() => again.frames.filter((f) => f.event === "room.message").length >= expected.length);
      const got = again.frames.filter((f) => f.event === "room.message").map((f) => f.message.id);
      expect(got).toEqual(expected);
      expect(again.frames.filter((f) => f.event === "room.message").slice(0, 5).map((f) => f.message.body)).toEqual(
        [0, 1, 2, 3, 4].map((i) => `missed ${i}`),
      );
    });

    test("recovery of more than ROOM_RECOVERY_MAX_MESSAGES replays the newest and says it was truncated", async () => {
      const room = "room_city_welcome";
      const res = await city.http(`/city/rooms/${room}/messages`, { method: "POST", token: bob, json: { body: "cursor" } });
      const since = ((await res.json()) as any).id;
      for (let i = 0; i < 53; i++) await city.http(`/city/rooms/${room}/messages`, { method: "POST", token: bob, json: { body: `m${i}` } });
      const s = await open(`/ws/city/rooms/${room}?since=${since}`);
      const notice = await s.next((f) => f.event === "error");
      expect(notice.code).toBe("recovery_truncated");
      const bodies = s.frames.filter((f) => f.event === "room.message").map((f) => f.message.body);
      expect(bodies).toEqual(Array.from({ length: 50 }, (_, i) => `m${i + 3}`));
      expect(s.closed).toBeNull();
    });

    test("bad frames get an error frame, change nothing, and leave the socket open", async () => {
      const s = await open(`/ws/city/rooms/${GENERAL}?token=${alice}`);
      const anon = await open(`/ws/city/rooms/${GENERAL}`);
      const before = await messageCount();
      const cases: [unknown, string][] = [
        ["not json", "invalid_frame"],
        ["[1,2]", "invalid_frame"],
        [{ noevent: 1 }, "invalid_frame"],
        [{ event: "room.explode" }, "unknown_event"],
        [{ event: "room.message.send", room_id: "room_city_science", body: "x" }, "room_mismatch"],
        [{ event: "room.message.send", body: "   " }, "validation_failed"],
        [{ event: "room.message.send", body: "x".repeat(4001) }, "validation_failed"],
        [{ event: "room.message.send", body: 42 }, "validation_failed"],
        [{ event: "room.message.send" }, "validation_failed"],
      ];
      for (const [frame, code] of cases) {
        const from = s.frames.length;
        s.send(frame);
        const err = await s.next((f) => f.event === "error", 3000, from);
        expect({ frame, code: err.code }).toEqual({ frame, code });
        expect(typeof err.message).toBe("string");
      }
      s.ws.send(new Uint8Array([1, 2, 3]));
      expect((await s.next((f) => f.event === "error" && f.message.includes("binary"))).code).toBe("invalid_frame");
      anon.send({ event: "room.message.send", body: "anonymous" });
      expect((await anon.next((f) => f.event === "error")).code).toBe("unauthorized");
      // exactly 4000 characters (emoji count as one) is accepted
      s.send({ event: "room.message.send", body: "🚀".repeat(4000) });
      await s.next((f) => f.event === "room.message" && f.message.author_user_id === "u_alice" && f.message.body.length === 8000);
      expect(await messageCount()).toBe(before + 1);
      expect(s.closed).toBeNull();
      expect(anon.closed).toBeNull();
    });

    test("an oversize frame gets frame_too_large and closes the socket with 1009", async () => {
      const s = await open(`/ws/city/rooms/${GENERAL}?token=${alice}`);
      const before = await messageCount();
      s.send({ event: "room.message.send", body: "x".repeat(city.config.wsMaxFrameBytes) });
      expect((await s.next((f) => f.event === "error")).code).toBe("frame_too_large");
      expect((await s.waitClosed()).code).toBe(1009);
      expect(await messageCount()).toBe(before);
    });

    test("upgrades are refused with a JSON error: unknown room, bad since, forged or expired token", async () => {
      const base = city.url;
      expect(await refusedUpgrade(`${base}/ws/city/rooms/room_city_nope`)).toMatchObject({ status: 404, body: { error: { code: "room_not_found" } } });
      expect(await refusedUpgrade(`${base}/ws/city/rooms/..%2F..%2Fetc`)).toMatchObject({ status: 404 });
      expect(await refusedUpgrade(`${base}/ws/city/rooms/${GENERAL}?since=nope`)).toMatchObject({ status: 400, body: { error: { code: "invalid_cursor" } } });
      const forged = alice.slice(0, -4) + (alice.endsWith("AAAA") ? "BBBB" : "AAAA");
      expect(await refusedUpgrade(`${base}/ws/city/rooms/${GENERAL}?token=${forged}`)).toMatchObject({ status: 401, body: { error: { code: "unauthorized" } } });
      const expired = await city.token("u_alice", -60);
      expect(await refusedUpgrade(`${base}/ws/city/rooms/${GENERAL}?token=${expired}`)).toMatchObject({ status: 401, body: { error: { message: "token expired" } } });
      expect(await refusedUpgrade(`${base}/ws/city/rooms/${GENERAL}`, { authorization: `Bearer ${forged}` })).toMatchObject({ status: 401 });
      const plain = await fetch(`${base}/ws/city/rooms/${GENERAL}`);
      expect(plain.status).toBe(426);
      // a plain request hears 426 first, whatever else is wrong with it (decided without the store, or after it)
      expect((await fetch(`${base}/ws/city/rooms/${GENERAL}?token=${forged}`)).status).toBe(426);
      expect((await fetch(`${base}/ws/city/rooms/room_city_nope`)).status).toBe(426);
      // a header token works as well as ?token=
      const viaHeader = await TestSocket.open(city.wsUrl(`/ws/city/rooms/${GENERAL}`), { authorization: `Bearer ${bob}` });
      sockets.push(viaHeader);
      viaHeader.send({ event: "room.message.send", body: "header auth" });
      expect((await viaHeader.next((f) => f.event === "room.message" && f.message.body === "header auth")).message.author_user_id).toBe("u_bob");
    });
  });
}

describe("membership announcements in large rooms", () => {
  // On fake time: holds are written only by the flushes the test makes, so which joins share a
  // flush is decided here, not by the machine's speed.
  const room = "room_city_general";
  const startCapped = async () => {
    const clock = new ManualClock(Date.now());
    const city = await startTestCity({ ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS: "2", CITY_WRITE_RATE_PER_SECOND: "0" }, { clock, scheduler: clock });
    const opened: TestSocket[] = [];
    const watcher = await TestSocket.open(city.wsUrl(`/ws/city/rooms/${room}`));
    opened.push(watcher);
    /** Opens `user`'s socket and waits until the server has run its open handler (it holds the room). */
    const join = async (user: string) => {
      const s = await TestSocket.open(city.wsUrl(`/ws/city/rooms/${room}?token=${await city.token(user)}`));
      opened.push(s);
      await serverRead(s);
      return s;
    };
    /** A sentinel message: everything announced before it has reached the watcher once it arrives. */
    const sentinel = async (body: string) => {
      await city.http(`/city/rooms/${room}/messages`, { method: "POST", token: await city.token("u_a"), json: { body } });
      await watcher.next((f) => f.event === "room.message" && f.message.body === body);
    };
    const users = (event: string) => watcher.frames.filter((f) => f.event === event).map((f) => f.user_id);
    const dispose = async () => {
      for (const s of opened) s.close();
      await city.dispose();
    };
    return { city, watcher, join, sentinel, users, dispose };
  };

  test("above ROOM_MEMBERSHIP_EVENTS_MAX_MEMBERS users, socket joins and leaves are not broadcast", async () => {
    const t = await startCapped();
    try {
      await t.join("u_a");
      await t.city.presence.flush();
      await t.join("u_b");
      await t.city.presence.flush();
      const c = await t.join("u_c");
      await t.city.presence.flush();
      expect(t.city.presence.roomHolders(room)).toBe(3);
      // HTTP join above the cap: accepted, not announced
      const res = await t.city.http(`/city/rooms/${room}/join`, { method: "POST", token: await t.city.token("u_http") });
      expect(await res.json()).toEqual({ ok: true, room_id: room, user_id: "u_http", announced: false });
      await t.sentinel("sentinel 1");
      expect(t.users("room.join")).toEqual(["u_a", "u_b"]);
      expect(t.users("room.presence")).toEqual(["u_a", "u_b"]);
      c.close();
      await c.waitClosed();
      await serverRead(t.watcher); // the server has seen the close before it reads this
      await t.city.presence.flush();
      expect(t.city.presence.roomHolders(room)).toBe(2);
      await t.sentinel("sentinel 2");
      expect(t.users("room.leave")).toEqual([]); // the room had 3 users before u_c left
    } finally {
      await t.dispose();
    }
  });

  test("a join is not announced when, by the time its flush answers, this instance already holds more users there than the cap", async () => {
    const t = await startCapped();
    try {
      await t.join("u_a");
      const written = t.city.presence.flush(); // writes u_a's hold alone: a room of 1 user
      // two more users hold the room while that write is in flight (the call a socket's open makes;
      // their holds wait for the next flush), so the room has 3 users when u_a's join is reported
      expect(t.city.presence.hold(room, "u_y")).toBe(true);
      expect(t.city.presence.hold(room, "u_z")).toBe(true);
      await written;
      expect(t.city.presence.roomHolders(room)).toBe(1);
      expect(t.city.presence.roomUsersAtLeast(room)).toBe(3);
      await t.sentinel("after the write");
      expect(t.users("room.join")).toEqual([]);
      expect(t.users("room.presence")).toEqual([]);
      t.city.presence.release(room, "u_y");
      t.city.presence.release(room, "u_z");
    } finally {
      await t.dispose();
    }
  });

  test("joins that take a room over the cap in one flush announce none of them; a leave from a room of at most the cap is announced", async () => {
    const t = await startCapped();
    try {
      await t.join("u_a");
      const b = await t.join("u_b");
      const c = await t.join("u_c");
      await t.city.presence.flush(); // one write: 0 → 3 users (counted join by join, u_a and u_b would be announced)
      expect(t.city.presence.roomHolders(room)).toBe(3);
      await t.sentinel("after the burst");
      expect(t.users("room.join")).toEqual([]);
      c.close();
      await c.waitClosed();
      await serverRead(t.watcher);
      await t.city.presence.flush();
      b.close();
      await b.waitClosed();
      await serverRead(t.watcher);
      await t.city.presence.flush();
      // u_c left a room of 3 (not announced), u_b a room of 2 (announced)
      expect(await t.watcher.next((f) => f.event === "room.leave")).toEqual({ event: "room.leave", room_id: room, user_id: "u_b" });
      await t.sentinel("after the leaves");
      expect(t.users("room.leave")).toEqual(["u_b"]);
    } finally {
      await t.dispose();
    }
  });
});
