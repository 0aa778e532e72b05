/**
 * Start, restart and stop on the embedded default: data survives a restart, default rooms are
 * not seeded twice, and stop() finishes acknowledged writes and closes sockets with 1001.
 */
import { describe, expect, test } from "bun:test";
import { startTestCity, testConfig, TestSocket } from "../helpers/city.ts";

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
      await Bun.sleep(5);
      const drained = await city.stop();
      expect(drained).toBe(true);
      const closed = await s.waitClosed();
      expect(closed.code).toBe(1001);
      // every message the socket saw acknowledged is in the store
      const acked = s.frames.filter((f) => f.event === "room.message").map((f) => f.message.id);
      expect(acked.length).toBeGreaterThan(0);
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
