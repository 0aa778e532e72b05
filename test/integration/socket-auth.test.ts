/**
 * Socket auth over time (SPEC "WebSockets"), on a real server on fake time: a socket whose token
 * expires is closed with 4001 `token_expired`; `auth.refresh` with a fresh token of the same user
 * keeps it open; a refused refresh gets an `error` frame and changes nothing.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ManualClock } from "../../src/clock.ts";
import { CLOSE } from "../../src/engine/errors.ts";
import { startTestCity, TestSocket, type TestCity } from "../helpers/city.ts";

describe("socket auth over time", () => {
  const clock = new ManualClock(Date.now());
  let city: TestCity;
  const sockets: TestSocket[] = [];
  const open = async (p: string) => {
    const s = await TestSocket.open(city.wsUrl(p));
    sockets.push(s);
    return s;
  };
  beforeAll(async () => {
    city = await startTestCity({ PRESENCE_FLUSH_MS: "1000", PRESENCE_SWEEP_MS: "10000" }, { clock, scheduler: clock });
  });
  afterAll(async () => {
    for (const s of sockets) s.close();
    await city.dispose();
  });
  /** A token valid for `ttl` s from the server's (fake) now. */
  const tokenFor = (user: string, ttl: number) => city.token(user, Math.ceil((clock.now() - Date.now()) / 1000) + ttl);

  test("an expired token closes the room and presence sockets with 4001; auth.refresh keeps one open", async () => {
    const short = await tokenFor("u_short", 60);
    const stays = await open(`/ws/city/rooms/room_city_general?token=${short}`);
    const expires = await open(`/ws/city/rooms/room_city_general?token=${short}`);
    const presence = await open(`/ws/city/presence?token=${short}`);
    await presence.next((f) => f.type === "snapshot");
    stays.send({ event: "auth.refresh", token: await tokenFor("u_short", 3600) });
    const ack = await stays.next((f) => f.event === "auth.refreshed");
    expect(Date.parse(ack.expires_at)).toBeGreaterThan(clock.now() + 3000_000);
    await clock.advance(60_000 + 5_000 + 1_000);
    expect((await expires.waitClosed()).code).toBe(CLOSE.tokenExpired);
    expect((await presence.waitClosed()).code).toBe(CLOSE.tokenExpired);
    expect(stays.closed).toBeNull();
    expect(stays.frames.filter((f) => f.event === "error")).toEqual([]);
    // and it still acts as its user
    stays.send({ event: "room.message.send", body: "still here" });
    expect((await stays.next((f) => f.event === "room.message" && f.message.body === "still here")).message.author_user_id).toBe("u_short");
  });

  test("a refresh with another user's token, a bad token or no token gets an error frame and changes nothing", async () => {
    const mine = await tokenFor("u_me", 60);
    const s = await open(`/ws/city/rooms/room_city_general?token=${mine}`);
    const anon = await open(`/ws/city/rooms/room_city_general`);
    const cases: [unknown, string][] = [
      [{ event: "auth.refresh", token: await tokenFor("u_other", 3600) }, "unauthorized"],
      [{ event: "auth.refresh", token: "not.a.jwt" }, "unauthorized"],
      [{ event: "auth.refresh", token: await tokenFor("u_me", -10) }, "unauthorized"],
      [{ event: "auth.refresh" }, "validation_failed"],
    ];
    for (const [frame, code] of cases) {
      const from = s.frames.length;
      s.send(frame);
      expect((await s.next((f) => f.event === "error", 3000, from)).code).toBe(code);
    }
    anon.send({ event: "auth.refresh", token: mine });
    expect((await anon.next((f) => f.event === "error")).code).toBe("unauthorized");
    expect(s.frames.filter((f) => f.event === "auth.refreshed")).toEqual([]);
    // none of them extended the socket: it closes at its own token's expiry
    await clock.advance(60_000 + 5_000 + 1_000);
    expect((await s.waitClosed()).code).toBe(CLOSE.tokenExpired);
    expect(anon.closed).toBeNull();
  });
});
