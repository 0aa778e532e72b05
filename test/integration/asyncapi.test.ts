/**
 * `/asyncapi.json` against the frames a real city sends and accepts: a scripted session on each of
 * the three sockets provokes every kind of frame; each frame the server sends must match one of its
 * channel's documented `send` messages (checked with a JSON Schema validator, ajv, on the served
 * document, not on our own schema objects), each frame we send one of its `receive` messages, and
 * every documented message must have been seen.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Ajv, { type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";
import { startTestCity, TestSocket, type TestCity } from "../helpers/city.ts";

type Doc = {
  asyncapi: string;
  channels: Record<string, { address: string; messages: Record<string, { $ref: string }> }>;
  operations: Record<string, { action: "send" | "receive"; channel: { $ref: string }; messages: { $ref: string }[] }>;
  components: { messages: Record<string, { name: string; payload: unknown }> };
};

describe("AsyncAPI document", () => {
  let city: TestCity;
  let doc: Doc;
  /** Per channel and direction: each documented message's validator, by name. */
  const validators = new Map<string, { name: string; check: ValidateFunction }[]>();
  const seen = new Map<string, Set<string>>();
  const unmatched: { key: string; frame: unknown }[] = [];

  /** Records a frame against its channel's documented messages (direction: the server's). */
  const record = (channel: string, action: "send" | "receive", frame: unknown) => {
    const key = `${channel}.${action}`;
    const hit = validators.get(key)!.find((v) => v.check(frame));
    if (!hit) unmatched.push({ key, frame });
    else seen.get(key)!.add(hit.name);
  };
  /** A TestSocket whose every received frame is recorded under `channel`. */
  const open = async (channel: string, url: string) => {
    const s = await TestSocket.open(url);
    const frames = (s as unknown as { frames: unknown[] }).frames;
    const push = frames.push.bind(frames);
    for (const f of frames) record(channel, "send", f);
    frames.push = (...items: unknown[]) => {
      for (const f of items) record(channel, "send", f);
      return push(...items);
    };
    const send = s.send.bind(s);
    s.send = (f: Record<string, unknown>) => {
      record(channel, "receive", f);
      send(f);
    };
    return s;
  };

  beforeAll(async () => {
    city = await startTestCity({ ROOM_PRESENCE_THROTTLE_MS: "50", PRESENCE_FLUSH_MS: "10" });
    const res = await city.http("/asyncapi.json");
    expect(res.status).toBe(200);
    doc = (await res.json()) as Doc;
    const ajv = new Ajv({ strict: false, allErrors: true });
    addFormats(ajv);
    for (const [name, op] of Object.entries(doc.operations)) {
      const channel = op.channel.$ref.split("/").pop()!;
      const key = `${channel}.${op.action}`;
      const list = op.messages.map((m) => {
        const local = m.$ref.split("/").pop()!;
        const comp = doc.channels[channel]!.messages[local]!.$ref.split("/").pop()!;
        const message = doc.components.messages[comp]!;
        return { name: message.name, check: ajv.compile(message.payload as object) };
      });
      validators.set(key, list);
      seen.set(key, new Set());
      expect(name).toBe(key);
    }
  });
  afterAll(async () => {
    await city?.dispose();
  });

  test("it is AsyncAPI 3.0 with the three socket routes", () => {
    expect(doc.asyncapi).toBe("3.0.0");
    expect(Object.values(doc.channels).map((c) => c.address).sort()).toEqual(["/living-map/stream", "/ws/city/presence", "/ws/city/rooms/{room_id}"]);
  });

  test("the validators refuse frames that break the documented shape", () => {
    const sends = validators.get("room.send")!;
    const msg = { event: "room.message", room_id: "room_city_general", message: { id: "m_city_x", seq: 1, author_user_id: "u_a", author_agent_id: null, body: "hi", created_at: "2026-01-01T00:00:00.000Z" } };
    expect(sends.some((v) => v.check(msg))).toBe(true);
    expect(sends.some((v) => v.check({ ...msg, message: { ...msg.message, seq: "1" } }))).toBe(false);
    expect(sends.some((v) => v.check({ ...msg, message: { ...msg.message, created_at: "yesterday" } }))).toBe(false);
    expect(sends.some((v) => v.check({ event: "error", code: "no_such_code", message: "x" }))).toBe(false);
  });

  test("every frame of a session on each socket is documented, and every documented frame occurs", async () => {
    const alice = await city.token("u_alice");
    const bob = await city.token("u_bob");
    const fresh = await city.token("u_alice", 7200);
    const general = "room_city_general";

    // Room sockets: bob listens; alice does everything a client can.
    const bobRoom = await open("room", city.wsUrl(`/ws/city/rooms/${general}?token=${bob}`));
    const aliceRoom = await open("room", city.wsUrl(`/ws/city/rooms/${general}?token=${alice}&since=0`));
    await aliceRoom.next((f) => f.event === "room.message");
    const presence = await open("presence", city.wsUrl(`/ws/city/presence?token=${alice}`));
    await presence.next((f) => f.type === "snapshot");
    presence.send({ event: "presence.heartbeat", user_id: "u_alice" });
    await bobRoom.next((f) => f.event === "room.presence" && f.user_id === "u_alice");
    await presence.next((f) => f.event === "presence.update" && f.user_id === "u_alice");
    await presence.next((f) => f.type === "room.presence" && f.room_slug === "general");
    presence.send({ event: "presence.heartbeat", user_id: "u_mallory" });
    await presence.next((f) => f.event === "error" && f.code === "user_mismatch");
    presence.send({ event: "auth.refresh", token: fresh });
    await presence.next((f) => f.event === "auth.refreshed");

    aliceRoom.send({ event: "room.message.send", room_id: general, body: "привіт" });
    await bobRoom.next((f) => f.event === "room.message" && f.message.body === "привіт");
    aliceRoom.send({ event: "room.typing", room_id: general });
    await bobRoom.next((f) => f.event === "room.typing" && f.user_id === "u_alice");
    aliceRoom.send({ event: "room.leave" });
    aliceRoom.send({ event: "room.join", room_id: general });
    aliceRoom.send({ event: "auth.refresh", token: fresh });
    await aliceRoom.next((f) => f.event === "auth.refreshed");
    aliceRoom.send({ event: "room.dance" } as never);
    await aliceRoom.next((f) => f.event === "error" && f.code === "unknown_event");
    expect((await city.http(`/city/rooms/${general}/join`, { method: "POST", token: alice })).status).toBe(200);
    await bobRoom.next((f) => f.event === "room.join" && f.user_id === "u_alice");
    expect((await city.http(`/city/rooms/${general}/leave`, { method: "POST", token: alice })).status).toBe(200);
    await bobRoom.next((f) => f.event === "room.leave" && f.user_id === "u_alice");

    // The Living Map stream: snapshot, an event (the city's own message), refresh, an error.
    const map = await open("livingMap", city.wsUrl(`/living-map/stream?token=${alice}`));
    await map.next((f) => f.kind === "snapshot");
    expect((await city.http(`/city/rooms/${general}/messages`, { method: "POST", token: bob, json: { body: "на мапу" } })).status).toBe(201);
    await map.next((f) => f.kind === "event" && f.event_type === "city.event.room_message");
    map.send({ event: "auth.refresh", token: fresh });
    await map.next((f) => f.event === "auth.refreshed");
    map.send({ event: "subscribe" } as never);
    await map.next((f) => f.event === "error");

    for (const s of [bobRoom, aliceRoom, presence, map]) s.close();
    // The two frames sent to provoke errors are, rightly, undocumented; nothing else may be.
    const undocumented = unmatched.filter((u) => !(u.key.endsWith(".receive") && ["room.dance", "subscribe"].includes((u.frame as { event: string }).event)));
    expect(undocumented).toEqual([]);
    for (const [key, list] of validators) expect({ key, seen: [...seen.get(key)!].sort() }).toEqual({ key, seen: list.map((v) => v.name).sort() });
  });
});
