/**
 * The typed client (`daarion-city/client`) against a real city (embedded engines, in process):
 * reconnects resume by seq with nothing missed or repeated, tokens are refreshed on the socket
 * before they expire (on fake time), refusals come back as typed errors, and the client bundles for
 * a browser with no server code in it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import path from "node:path";
import { backoffDelay, CityApiError, CityClient, tokenExpiry, type ClientTimers, type RoomMessage } from "daarion-city/client";
import { applyLivingMapEvent } from "../../src/client/living-map.ts";
import { startTestCity, waitFor, type TestCity } from "../helpers/city.ts";

/** Timers the test moves by hand; `random()` is fixed so backoff waits are known. */
class FakeTimers implements ClientTimers {
  t = Date.now();
  private queue: { at: number; fn: () => void; id: number }[] = [];
  private next = 1;
  setTimeout(fn: () => void, ms: number) {
    const id = this.next++;
    this.queue.push({ at: this.t + ms, fn, id });
    return id;
  }
  clearTimeout(h: unknown) {
    this.queue = this.queue.filter((x) => x.id !== h);
  }
  now() {
    return this.t;
  }
  random() {
    return 0.5;
  }
  /** Moves time forward, running what falls due in order. */
  advance(ms: number) {
    const end = this.t + ms;
    for (;;) {
      this.queue.sort((a, b) => a.at - b.at);
      const due = this.queue[0];
      if (!due || due.at > end) break;
      this.queue.shift();
      this.t = due.at;
      due.fn();
    }
    this.t = end;
  }
  pending() {
    return this.queue.length;
  }
}

/** The global WebSocket, with every instance kept so a test can cut a connection from the client side. */
const made: WebSocket[] = [];
class TrackedWebSocket extends WebSocket {
  constructor(url: string | URL) {
    super(url);
    made.push(this);
  }
}

describe("typed client", () => {
  let city: TestCity;
  beforeAll(async () => {
    city = await startTestCity({ CITY_WRITE_RATE_PER_SECOND: "1000", CITY_WRITE_BURST: "1000" });
  });
  afterAll(async () => {
    await city?.dispose();
  });

  test("backoff: full jitter under a doubling ceiling capped at maxMs", () => {
    expect(backoffDelay(0, {}, () => 0.999)).toBe(499);
    expect(backoffDelay(3, {}, () => 0.5)).toBe(2000);
    expect(backoffDelay(40, { maxMs: 30_000 }, () => 0.999)).toBe(29_970);
    expect(backoffDelay(5, { baseMs: 100, maxMs: 1000 }, () => 0)).toBe(0);
  });

  test("HTTP refusals are CityApiError with the server's code and status", async () => {
    const anon = new CityClient({ baseUrl: city.url });
    const err = await anon.sendMessage("room_city_general", "hi").catch((e) => e);
    expect(err).toBeInstanceOf(CityApiError);
    expect(err).toMatchObject({ status: 401, code: "unauthorized" });
    const missing = await anon.room("room_city_nope").catch((e) => e);
    expect(missing).toMatchObject({ status: 404, code: "room_not_found" });
  });

  test("a room socket cut while messages are sent comes back with since: every message once, in seq order", async () => {
    const token = await city.token("u_reader");
    const reader = new CityClient({ baseUrl: city.url, token, WebSocket: TrackedWebSocket as typeof WebSocket, backoff: { baseMs: 20, maxMs: 100 } });
    const writer = new CityClient({ baseUrl: city.url, token: await city.token("u_writer") });
    const room = await writer.createRoom({ name: "Resume", slug: `resume_${Date.now()}` });
    const got: RoomMessage[] = [];
    const before = made.length; // sockets other tests made
    const conn = reader.roomSocket(room.id, { since: 0, onMessage: (m) => got.push(m) });
    await waitFor(() => conn.status, (s) => s === "open");
    const sent: number[] = [];
    for (let i = 0; i < 30; i++) {
      sent.push((await writer.sendMessage(room.id, `before ${i}`)).seq);
      // cut from the client side mid-stream, twice: the second cut waits for the reconnect the
      // first one caused (else it could close the same, already closed, socket again)
      if (i === 10) made.at(-1)!.close();
      if (i === 20) {
        await waitFor(() => made.length - before, (n) => n >= 2);
        await waitFor(() => made.at(-1)!.readyState, (r) => r === WebSocket.OPEN);
        made.at(-1)!.close();
      }
    }
    await waitFor(() => got.length, (n) => n >= 30);
    const sentinel = await writer.sendMessage(room.id, "sentinel");
    await waitFor(() => got.at(-1)?.message.seq, (s) => s === sentinel.seq);
    expect(got.map((m) => m.message.seq)).toEqual([...sent, sentinel.seq]);
    expect(conn.lastSeq).toBe(sentinel.seq);
    expect(made.length - before).toBeGreaterThanOrEqual(3);
    conn.close();
  });

  test("the socket's token is refreshed with auth.refresh before it expires (fake time)", async () => {
    const timers = new FakeTimers();
    let current = await city.token("u_refresh", 3600);
    const client = new CityClient({ baseUrl: city.url, token: () => current, timers, refreshBeforeMs: 60_000 });
    const frames: string[] = [];
    const conn = client.roomSocket("room_city_general", { onFrame: (f) => frames.push(f.event) });
    await waitFor(() => conn.status, (s) => s === "open");
    await waitFor(() => timers.pending(), (n) => n > 0);
    const expires = tokenExpiry(current)!;
    current = await city.token("u_refresh", 7200);
    // Not yet: a minute and a bit before expiry is still too early.
    timers.advance(expires - timers.now() - 61_000);
    const sentinel = await new CityClient({ baseUrl: city.url, token: await city.token("u_sentinel") }).sendMessage("room_city_general", "sentinel");
    await waitFor(() => frames.includes("room.message"), Boolean);
    expect(frames).not.toContain("auth.refreshed");
    expect(sentinel.seq).toBeGreaterThan(0);
    timers.advance(2000);
    await waitFor(() => frames.includes("auth.refreshed"), Boolean);
    conn.close();
  });

  test("the client bundles for a browser without the server: no Elysia, no stores, no brokers", async () => {
    const out = await Bun.build({ entrypoints: [path.join(import.meta.dir, "../../src/client/react.ts")], target: "browser", external: ["react"], minify: true });
    expect(out.success).toBe(true);
    const code = await out.outputs[0]!.text();
    for (const server of ["elysia", "postgres", "bun:sqlite", "nats", "redis", "Bun.serve", "@sinclair/typebox"]) expect(code).not.toContain(server);
    expect(code.length).toBeLessThan(30_000);
  });

  test("living map events: applied in place as new objects, or null for an entity the snapshot lacks", () => {
    const snap = {
      generated_at: "2026-01-01T00:00:00.000Z",
      layers: { city: {}, space: { planets: [], nodes: [{ id: "node:a", cpu: 1 }] }, nodes: { items: [{ id: "node:a", status: "online", metrics: { cpu: 1 }, alerts: [] }] }, agents: { items: [{ id: "agent:x", status: "idle" }] } },
      meta: { source_services: [], sources: [], version: 3, last_event_id: null },
    };
    const ev = (event_type: string, payload: Record<string, unknown>) => ({ kind: "event" as const, id: `e-${event_type}`, event_type, timestamp: "2026-01-01T00:00:01.000Z", payload });
    const next = applyLivingMapEvent(snap, ev("node.metrics.a", { cpu: 50, status: "busy" }))!;
    expect((next.layers.nodes.items[0] as any).metrics.cpu).toBe(50);
    expect((next.layers.space.nodes[0] as any).cpu).toBe(50);
    expect((snap.layers.nodes.items[0] as any).metrics.cpu).toBe(1);
    expect(next.layers.agents).toBe(snap.layers.agents);
    expect(next.meta.last_event_id).toBe("e-node.metrics.a");
    const agent = applyLivingMapEvent(snap, ev("agent.event.status", { agent_id: "x", status: "active" }))!;
    expect((agent.layers.agents.items[0] as any).status).toBe("active");
    expect(applyLivingMapEvent(snap, ev("node.metrics.b", { cpu: 5 }))).toBeNull();
    expect(applyLivingMapEvent(snap, ev("dao.event.created", { dao_id: "d" }))).toBeNull();
  });
});
