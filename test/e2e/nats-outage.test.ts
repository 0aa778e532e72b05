/**
 * A NATS outage of 10 s under load (longer on a loaded machine: until 20 writes were acknowledged
 * without NATS), on the test's own nats-server (a spare port): writes go on,
 * and once it is back every socket on the other instance has every message, in order, without
 * reconnecting.
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { binaryToken, startBinary, stopBinary, type RunningBinary } from "../helpers/binary.ts";
import { TestSocket } from "../helpers/city.ts";
import { createTestSchema, deleteRedisKeys, randomSuffix } from "../helpers/engines.ts";
import { contiguous, lastSeq, pg, post, redis, ROOM, SECRET, seqs } from "../helpers/instances.ts";
import { ownNats, type OwnEngine } from "../helpers/own-engines.ts";

describe.skipIf(!pg || !redis)("a NATS outage under load", () => {
  test("10 s without NATS: writes go on, and once it is back every socket on the other instance has every message, in order", async () => {
    const db = await createTestSchema(pg!);
    const prefix = `t_${randomSuffix()}`;
    const work = mkdtempSync(path.join(tmpdir(), "dc-e2e-outage-"));
    const receivers: TestSocket[] = [];
    const started: RunningBinary[] = [];
    let natsServer: OwnEngine | null = null;
    try {
      natsServer = await ownNats();
      const env = {
        DATABASE_URL: db.url, REDIS_URL: redis!, REDIS_KEY_PREFIX: `${prefix}:`, NATS_URL: natsServer.url, JWT_SECRET: SECRET,
        CITY_WRITE_RATE_PER_SECOND: "0", ROOM_POSITION_CHECK_MS: "1000",
      };
      for (let i = 0; i < 2; i++) started.push(await startBinary({ ...env, DATA_DIR: mkdtempSync(path.join(work, "d-")) }, work));
      const [a, b] = started as [RunningBinary, RunningBinary];
      for (let i = 0; i < 3; i++) receivers.push(await TestSocket.open(`${b.wsUrl}/ws/city/rooms/${ROOM}`));
      const t = binaryToken(env, "u_outage");
      const start = (await lastSeq(a)) + 1;
      const acked: number[] = [];
      let writing = true;
      let outage = false;
      let ackedInOutage = 0;
      const writer = (async () => {
        while (writing) {
          const r = await post(a, t, "through the outage");
          if (r.status === 201) {
            acked.push(r.seq!);
            if (outage) ackedInOutage++;
          }
          await Bun.sleep(20);
        }
      })();
      await Bun.sleep(1000);
      await natsServer.stop();
      outage = true;
      // 10 s, and on until 20 writes were acknowledged without NATS (a loaded machine writes
      // slower: the count is what this checks, not the machine's speed), at most 30 s.
      const outageEnds = Date.now() + 30_000;
      await Bun.sleep(10_000);
      while (ackedInOutage <= 20 && Date.now() < outageEnds) await Bun.sleep(100);
      outage = false;
      await natsServer.start();
      await Bun.sleep(1500);
      writing = false;
      await writer;
      const end = Math.max(...acked);
      // Writes went on without NATS.
      expect(ackedInOutage).toBeGreaterThan(20);
      for (const r of receivers) {
        await r.until(() => seqs(r).at(-1) === end, 15_000);
        contiguous(seqs(r), start, end);
        expect(r.closed).toBeNull();
      }
    } finally {
      for (const r of receivers) r.close();
      for (const r of started) await stopBinary(r);
      await natsServer?.dispose();
      await db.drop();
      await deleteRedisKeys(redis!, `${prefix}:`);
      rmSync(work, { recursive: true, force: true });
    }
  }, 110_000);
});
