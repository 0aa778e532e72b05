/**
 * Hub against a real Bun server and real client sockets: recovery ordering with publications
 * racing the replay, broker bridging, and closing a slow consumer that stops reading.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server, ServerWebSocket } from "bun";
import { MemoryBroker, MemoryNetwork } from "../../src/engine/broker/memory.ts";
import { CLOSE } from "../../src/engine/errors.ts";
import { Hub } from "../../src/engine/hub.ts";
import { silentLogger } from "../../src/log.ts";
import { TestSocket } from "../helpers/city.ts";

interface Node {
  hub: Hub;
  server: Server<unknown>;
  opened: ServerWebSocket<unknown>[];
  /** Close codes seen by the server's close handler, in order. */
  closeCodes: number[];
}

const network = new MemoryNetwork();
const nodes: Node[] = [];

async function node(maxBufferedBytes = 1 << 20): Promise<Node> {
  const broker = new MemoryBroker(network);
  await broker.start();
  const hub = new Hub({ broker, log: silentLogger, maxBufferedBytes, sweepIntervalMs: 60_000 });
  const opened: ServerWebSocket<unknown>[] = [];
  const closeCodes: number[] = [];
  const server = Bun.serve<unknown>({
    port: 0,
    hostname: "127.0.0.1",
    fetch: (req, s) => (s.upgrade(req, { data: {} }) ? undefined : new Response("no", { status: 400 })),
    websocket: {
      backpressureLimit: maxBufferedBytes * 64,
      open: (ws) => {
        hub.track(ws);
        opened.push(ws);
      },
      message: () => {},
      close: (ws, code) => {
        closeCodes.push(code);
        hub.untrack(ws);
      },
    },
  });
  hub.attach(server);
  hub.start();
  const n = { hub, server, opened, closeCodes };
  nodes.push(n);
  return n;
}

async function connect(n: Node): Promise<{ client: TestSocket; ws: ServerWebSocket<unknown> }> {
  const before = n.opened.length;
  const client = await TestSocket.open(`ws://127.0.0.1:${n.server.port}/`);
  while (n.opened.length === before) await Bun.sleep(1);
  return { client, ws: n.opened.at(-1)! };
}

const frame = (id: string) => JSON.stringify({ event: "room.message", id });
const pub = (id: string) => ({ cursor: id, frame: frame(id) });

afterAll(async () => {
  for (const n of nodes) {
    n.hub.close();
    await n.server.stop(true);
  }
});

describe("Hub", () => {
  let a: Node;
  let b: Node;
  beforeAll(async () => {
    a = await node();
    b = await node();
  });

  test("recovery sends the replay, then what was published during it, without duplicates, then live", async () => {
    const { client, ws } = await connect(a);
    const replayed = await a.hub.subscribeWithRecovery(ws, "t1", async () => {
      // Published while the store is being read: m3 is also in the replay, m4 and m5 are not.
      a.hub.publishLocal("t1", pub("m3"));
      a.hub.publishLocal("t1", { cursor: null, frame: JSON.stringify({ event: "room.join", id: "join" }) });
      await Bun.sleep(20);
      a.hub.publishLocal("t1", pub("m4"));
      a.hub.publishLocal("t1", pub("m5"));
      return [pub("m1"), pub("m2"), pub("m3")];
    });
    expect(replayed).toBe(3);
    a.hub.publishLocal("t1", pub("m6"));
    await client.until(() => client.frames.length >= 7);
    await Bun.sleep(20);
    expect(client.frames.map((f) => f.id)).toEqual(["m1", "m2", "m3", "join", "m4", "m5", "m6"]);
  });

  test("a failed load leaves the socket unsubscribed and frees its buffer", async () => {
    const { client, ws } = await connect(a);
    await expect(
      a.hub.subscribeWithRecovery(ws, "t2", async () => {
        throw new Error("store down");
      }),
    ).rejects.toThrow("store down");
    a.hub.publishLocal("t2", pub("x"));
    await Bun.sleep(30);
    expect(client.frames).toEqual([]);
  });

  test("a socket that closes during recovery is not subscribed and the result is null", async () => {
    const { client, ws } = await connect(a);
    const result = a.hub.subscribeWithRecovery(ws, "t3", async () => {
      client.close();
      await client.waitClosed();
      await Bun.sleep(20);
      return [pub("m1")];
    });
    expect(await result).toBeNull();
    expect(a.hub.subscriberCount("t3")).toBe(0);
  });

  test("publish reaches subscribers on the other instance through the broker, in order", async () => {
    const { client, ws } = await connect(b);
    ws.subscribe("t4");
    for (let i = 0; i < 100; i++) a.hub.publish("t4", pub(`r${String(i).padStart(3, "0")}`));
    await client.until(() => client.frames.length === 100);
    expect(client.frames.map((f) => f.id)).toEqual(Array.from({ length: 100 }, (_, i) => `r${String(i).padStart(3, "0")}`));
  });

  test("a remote publication reaches a socket recovering on the other instance", async () => {
    const { client, ws } = await connect(b);
    await b.hub.subscribeWithRecovery(ws, "t5", async () => {
      a.hub.publish("t5", pub("m2"));
      await b.hub["opts"].broker.flush();
      await a.hub["opts"].broker.flush();
      await Bun.sleep(20);
      return [pub("m1")];
    });
    await client.until(() => client.frames.length === 2);
    expect(client.frames.map((f) => f.id)).toEqual(["m1", "m2"]);
  });

  test("a socket whose buffer stays over the cap is closed with 4008; a reading socket is not", async () => {
    const cap = 64 * 1024;
    const n = await node(cap);
    const reader = await connect(n);
    reader.ws.subscribe("flood");
    // A raw TCP client that completes the handshake and then never reads.
    const before = n.opened.length;
    const tcp = await Bun.connect({
      hostname: "127.0.0.1",
      port: n.server.port!,
      socket: { data() {}, open() {}, close() {}, error() {} },
    });
    tcp.pause?.();
    tcp.write(
      `GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    while (n.opened.length === before) await Bun.sleep(1);
    const stuck = n.opened.at(-1)!;
    stuck.subscribe("flood");
    const chunk = JSON.stringify({ pad: "x".repeat(16 * 1024) });
    let sent = 0;
    // Publish until the stuck socket's send buffer is past the cap (the kernel buffers fill first).
    while (stuck.getBufferedAmount() <= cap && sent < 4000) {
      n.hub.publishLocal("flood", { cursor: null, frame: chunk });
      sent++;
      if (sent % 50 === 0) await Bun.sleep(1);
    }
    expect(stuck.getBufferedAmount()).toBeGreaterThan(cap);
    const tracked = n.hub.socketCount();
    n.hub.sweep(); // first strike: a burst may still drain
    expect(stuck.readyState).toBe(1);
    n.hub.sweep(); // still over the cap: closed with 4008
    for (let i = 0; i < 6; i++) n.hub.sweep(); // had it not closed by now, it would be cut
    await reader.client.until(() => n.hub.socketCount() === tracked - 1, 5000);
    expect(stuck.readyState).toBe(3);
    expect(n.closeCodes).toEqual([CLOSE.slowConsumer]);
    // the reading socket got every publication and stays open
    await reader.client.until(() => reader.client.frames.length === sent, 10_000);
    expect(reader.client.closed).toBeNull();
    tcp.end();
  });
});
