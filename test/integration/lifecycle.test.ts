/**
 * Start, restart and stop on the embedded default: data survives a restart, default rooms are
 * not seeded twice, and stop() runs the lifecycle's steps in order (not ready, drain delay,
 * listener, writes, sockets, services, engines), each under a deadline.
 */
import { describe, expect, test } from "bun:test";
import { ManualClock } from "../../src/clock.ts";
import { refusedUpgrade, serverRead, startTestCity, testConfig, TestSocket, waitFor } from "../helpers/city.ts";

describe("lifecycle (embedded default)", () => {
  test("messages survive a restart and default rooms are seeded once", async () => {
    const { config, cleanup } = testConfig();
    try {
      const first = await startTestCity({}, { config });
      const token = await first.token("u_alice");
      const sent = (await (await first.http("/city/rooms/room_city_general/messages", { method: "POST", token, json: { body: "kept" } })).json()) as any;
      await first.stop();
      const second = await startTestCity({}, { config });
      const detail = (await (await second.http("/city/rooms/room_city_general")).json()) as any;
      expect(detail.messages.map((m: any) => m.body)).toEqual(["Ласкаво просимо до кімнати General!", "kept"]);
      expect(detail.messages[1]).toEqual(sent);
      const rooms = (await (await second.http("/city/rooms")).json()) as any[];
      expect(rooms.length).toBe(5);
      await second.stop();
    } finally {
      cleanup();
    }
  });

  test("stop() drains queued writes, closes sockets with 1001 and refuses new upgrades", async () => {
    const city = await startTestCity({ CITY_WRITE_RATE_PER_SECOND: "0" });
    try {
      const token = await city.token("u_alice");
      const s = await TestSocket.open(city.wsUrl(`/ws/city/rooms/room_city_general?token=${token}`));
      for (let i = 0; i < 50; i++) s.send({ event: "room.message.send", body: `late ${i}` });
      await serverRead(s); // all 50 are read (queued or committing) before the stop begins
      const drained = await city.stop();
      expect(drained).toBe(true);
      const closed = await s.waitClosed();
      expect(closed.code).toBe(1001);
      // every message the socket saw acknowledged is in the store
      const acked = s.frames.filter((f) => f.event === "room.message").map((f) => f.message.id);
      expect(acked.length).toBe(50);
      const { SqliteStore } = await import("../../src/storage/sqlite.ts");
      const store = new SqliteStore({ file: `${city.config.dataDir}/city.sqlite` });
      const stored = (await store.listMessages("room_city_general", { limit: 100 })).map((m) => m.id);
      await store.close();
      for (const id of acked) expect(stored).toContain(id);
      await expect(TestSocket.open(city.wsUrl("/ws/city/rooms/room_city_general"))).rejects.toThrow();
    } finally {
      await city.dispose();
    }
  });
});

describe("lifecycle: the stop, step by step", () => {
  test("not ready first: during the drain delay /readyz is 503 and upgrades get shutting_down, while open sockets and requests carry on", async () => {
    // The drain delay runs on fake time: the checks below happen inside it however slow the
    // machine, and the stop goes on only when the test advances the clock past it.
    const clock = new ManualClock(Date.now());
    const city = await startTestCity({ CITY_WRITE_RATE_PER_SECOND: "0", SHUTDOWN_DRAIN_DELAY_MS: "400" }, { clock, scheduler: clock });
    try {
      const token = await city.token("u_alice");
      const s = await TestSocket.open(city.wsUrl(`/ws/city/rooms/room_city_general`));
      const stopping = city.stop();
      expect(city.isStopping()).toBe(true);
      const ready = await city.http("/readyz");
      expect(ready.status).toBe(503);
      expect(((await ready.json()) as any).status).toBe("not_ready");
      expect(await refusedUpgrade(city.wsUrl("/ws/city/rooms/room_city_general").replace("ws", "http"))).toMatchObject({
        status: 503, body: { error: { code: "shutting_down" } },
      });
      // still listening and serving: a message posted now reaches the open socket
      const res = await city.http("/city/rooms/room_city_general/messages", { method: "POST", token, json: { body: "during the drain" } });
      expect(res.status).toBe(201);
      await s.next((f) => f.event === "room.message" && f.message.body === "during the drain");
      // Not past the delay yet: the listener is still open and the socket too.
      await clock.advance(399);
      expect((await city.http("/readyz")).status).toBe(503);
      expect(s.closed).toBeNull();
      await clock.advance(1);
      expect(await stopping).toBe(true);
      expect((await s.waitClosed()).code).toBe(1001);
      const order = city.stopReport().map((r) => r.name);
      expect(order.slice(0, 4)).toEqual(["readiness", "listener", "queued writes", "sockets and in-flight requests"]);
      expect(order.slice(-2)).toEqual(["broker", "store"]);
      expect(city.stopReport().every((r) => r.outcome === "ok")).toBe(true);
    } finally {
      await city.dispose();
    }
  });

  test("a request that never ends costs its step's budget, and the whole stop stays within SHUTDOWN_TIMEOUT_MS", async () => {
    const city = await startTestCity({ SHUTDOWN_TIMEOUT_MS: "1200" });
    try {
      // A raw request whose body never finishes: the server waits for it.
      const tcp = await Bun.connect({ hostname: "127.0.0.1", port: city.port, socket: { data() {} } });
      tcp.write("POST /city/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na");
      await waitFor(() => city.server.pendingRequests, (n) => n === 1); // the server is in it, waiting for the rest
      const t0 = performance.now();
      expect(await city.stop()).toBe(false);
      const ms = performance.now() - t0;
      expect(ms).toBeLessThan(1200 + 300);
      const report = city.stopReport();
      expect(report.find((r) => r.name === "sockets and in-flight requests")!.outcome).toBe("timed_out");
      // the hang did not eat the later steps' share: the engines were still closed
      expect(report.slice(-2)).toMatchObject([{ name: "broker", outcome: "ok" }, { name: "store", outcome: "ok" }]);
      tcp.end();
    } finally {
      await city.dispose();
    }
  });
});
