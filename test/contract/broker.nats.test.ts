import { describe, expect, test } from "bun:test";
import { NatsBroker } from "../../src/engine/broker/nats.ts";
import { silentLogger } from "../../src/log.ts";
import { engineUrl, randomSuffix } from "../helpers/engines.ts";
import { brokerContract } from "./broker.contract.ts";

const url = engineUrl("NATS_URL", "Broker contract: nats");
// Inbound subscriptions in the bus worker thread (the default) and on the main thread.
for (const busWorker of [true, false]) {
  const prefix = `t_${randomSuffix()}`;
  const start = async (subjectPrefix: string) => {
    const b = new NatsBroker({ url: url!, subjectPrefix, log: silentLogger, busWorker });
    await b.start();
    return b;
  };
  brokerContract(
    `nats (${busWorker ? "bus worker" : "main thread"})`,
    url ? { node: () => start(prefix), isolatedNode: () => start(`${prefix}_other`) } : null,
  );
}

describe.skipIf(!url)("NatsBroker: the bus worker is watched", () => {
  test("a worker that dies is replaced: its subscriptions come back and the gap is reported as down, then up", async () => {
    const prefix = `t_${randomSuffix()}`;
    const [a, b] = [
      new NatsBroker({ url: url!, subjectPrefix: prefix, log: silentLogger }),
      new NatsBroker({ url: url!, subjectPrefix: prefix, log: silentLogger, beatTimeoutMs: 1500 }),
    ];
    await a.start();
    await b.start();
    try {
      const got: string[] = [];
      b.subscribe("w.t", (_s, p) => got.push(p));
      const states: string[] = [];
      b.onStatus((s) => states.push(s));
      await b.flush();
      a.publish("w.t", "before");
      await a.flush();
      await b.flush();
      expect(got).toEqual(["before"]);
      // The thread dies (as a crash in it would end it): it neither beats nor delivers any more.
      (b as unknown as { inbound: { worker: Worker } }).inbound.worker.terminate();
      const end = Date.now() + 5000;
      while (b.stats.workerRestarts === 0 && Date.now() < end) await Bun.sleep(20);
      expect(b.stats.workerRestarts).toBe(1);
      while (b.state() !== "up" && Date.now() < end) await Bun.sleep(20);
      expect(states).toEqual(["down", "up"]);
      expect(b.detail()).toContain("1 worker restart");
      await b.flush();
      a.publish("w.t", "after");
      await a.flush();
      await b.flush();
      expect(got).toEqual(["before", "after"]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("a worker that stops beating (stalled) is replaced after the beat timeout", async () => {
    const b = new NatsBroker({ url: url!, subjectPrefix: `t_${randomSuffix()}`, log: silentLogger, beatTimeoutMs: 600 });
    await b.start();
    try {
      const w = (b as unknown as { inbound: { worker: Worker } }).inbound.worker;
      const deliver = w.onmessage!;
      // Its beats stop reaching this thread, as they would from a thread stuck in a loop.
      w.onmessage = (m: MessageEvent) => (m.data as { t: string }).t !== "beat" && deliver.call(w, m);
      const t0 = Date.now();
      while (b.stats.workerRestarts === 0 && Date.now() - t0 < 5000) await Bun.sleep(20);
      expect(b.stats.workerRestarts).toBe(1);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
      expect((b as unknown as { inbound: { worker: Worker } }).inbound.worker).not.toBe(w);
    } finally {
      await b.close();
    }
  });
});
