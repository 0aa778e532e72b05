/**
 * The Broker contract (src/engine/broker/broker.ts), run on MemoryBroker and NatsBroker.
 */
import { afterAll, describe, expect, test } from "bun:test";
import type { Broker } from "../../src/engine/broker/broker.ts";

export interface BrokerHarness {
  /** A started broker on the shared test network (same NATS prefix / same MemoryNetwork). */
  node(): Promise<Broker>;
  /** A started broker that must not see the shared network (another prefix / network). */
  isolatedNode(): Promise<Broker>;
}

/** Waits until `cond()` holds or `ms` pass; returns whether it held. */
async function until(cond: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await Bun.sleep(5);
  }
  return true;
}

export function brokerContract(name: string, harness: BrokerHarness | null): void {
  describe.skipIf(harness === null)(`Broker contract: ${name}`, () => {
    const opened: Broker[] = [];
    const node = async (isolated = false) => {
      const b = isolated ? await harness!.isolatedNode() : await harness!.node();
      opened.push(b);
      return b;
    };
    afterAll(async () => {
      for (const b of opened) await b.close();
    });

    test("delivers to other instances, in order, and never back to the publisher", async () => {
      const [a, b, c] = [await node(), await node(), await node()];
      const got: Record<string, string[]> = { a: [], b: [], c: [] };
      a.subscribe("rooms.>", (s, p) => got.a!.push(`${s}|${p}`));
      b.subscribe("rooms.>", (s, p) => got.b!.push(`${s}|${p}`));
      c.subscribe("rooms.*", (s, p) => got.c!.push(`${s}|${p}`));
      await Promise.all([a.flush(), b.flush(), c.flush()]);
      const sent = Array.from({ length: 500 }, (_, i) => `payload ${i} «юнікод»`);
      for (const p of sent) a.publish("rooms.r1", p);
      await a.flush();
      expect(await until(() => got.b!.length === 500 && got.c!.length === 500)).toBe(true);
      expect(got.b).toEqual(sent.map((p) => `rooms.r1|${p}`));
      expect(got.c).toEqual(got.b!);
      // a sentinel from b reaches a after anything a could have got back from its own 500
      b.publish("rooms.sentinel", "s");
      await b.flush();
      expect(await until(() => got.a!.length === 1)).toBe(true);
      expect(got.a).toEqual(["rooms.sentinel|s"]);
    });

    test("wildcards: * matches one token, > matches the rest", async () => {
      const [a, b] = [await node(), await node()];
      const star: string[] = [];
      const tail: string[] = [];
      b.subscribe("w.*.x", (s) => star.push(s));
      b.subscribe("w.>", (s) => tail.push(s));
      await b.flush();
      for (const s of ["w.1.x", "w.1.y", "w.1.2.x", "w.9.x"]) a.publish(s, "p");
      await a.flush();
      expect(await until(() => tail.length === 4)).toBe(true);
      expect(star).toEqual(["w.1.x", "w.9.x"]);
    });

    test("unsubscribe stops delivery", async () => {
      const [a, b] = [await node(), await node()];
      const got: string[] = [];
      const off = b.subscribe("u.t", (_s, p) => got.push(p));
      await b.flush();
      a.publish("u.t", "1");
      await a.flush();
      expect(await until(() => got.length === 1)).toBe(true);
      off();
      const sentinel: string[] = [];
      b.subscribe("u.s", (_s, p) => sentinel.push(p));
      await b.flush();
      a.publish("u.t", "2");
      a.publish("u.s", "sentinel"); // same publisher: it arrives after "2" would have
      await a.flush();
      expect(await until(() => sentinel.length === 1)).toBe(true);
      expect(got).toEqual(["1"]);
    });

    test("a node on another network or prefix sees nothing", async () => {
      const a = await node();
      const other = await node(true);
      const got: string[] = [];
      other.subscribe(">", (s) => got.push(s));
      await other.flush();
      a.publish("iso.t", "x");
      await a.flush();
      // a round trip on `other`: whatever the server routed to it before has been handed over
      await other.flush();
      expect(got).toEqual([]);
    });

    test("echo: a subscription that asks for it also gets this instance's own publications", async () => {
      const [a, b] = [await node(), await node()];
      const own: string[] = [];
      const plain: string[] = [];
      a.subscribe("echo.t", (_s, p) => own.push(p), { echo: true });
      a.subscribe("echo.t", (_s, p) => plain.push(p));
      await a.flush();
      a.publish("echo.t", "mine");
      b.publish("echo.t", "theirs");
      await b.flush();
      await a.flush();
      expect(await until(() => own.length === 2)).toBe(true);
      expect(own.sort()).toEqual(["mine", "theirs"]);
      expect(plain).toEqual(["theirs"]);
    });

    test("state is up while started and down after close; close is idempotent", async () => {
      const a = await node();
      expect(a.state()).toBe("up");
      await a.close();
      await a.close();
      expect(a.state()).toBe("down");
      a.publish("after.close", "x"); // must not throw
    });
  });
}
