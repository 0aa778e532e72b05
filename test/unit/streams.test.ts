/**
 * Room streams and the hub against real Bun servers, real client sockets and a real (in-memory)
 * SQLite store, on fake time: seq order, gaps filled by the broker or from the store, positioning
 * after a lost last message and after an outage, recovery without gap or duplicate, interest-based
 * subscriptions; the hub's slow-consumer and token-expiry closes. "Nothing arrived" is proven by a
 * sentinel event published after it: a socket receives frames in order.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server, ServerWebSocket } from "bun";
import { ManualClock } from "../../src/clock.ts";
import { MemoryBroker, MemoryNetwork } from "../../src/engine/broker/memory.ts";
import { CLOSE } from "../../src/engine/errors.ts";
import { Hub } from "../../src/engine/hub.ts";
import { encodeRoomMessage } from "../../src/engine/protocol.ts";
import { RoomStreams, type RoomHistory } from "../../src/engine/streams.ts";
import { IdGenerator } from "../../src/ids.ts";
import { silentLogger } from "../../src/log.ts";
import { SqliteStore } from "../../src/storage/sqlite.ts";
import type { Message } from "../../src/storage/store.ts";
import { TestSocket } from "../helpers/city.ts";

const GRACE = 20;
const POSITION = 5000;
const LINGER = 1000;

const store = new SqliteStore({ file: ":memory:" });
const ids = new IdGenerator();
const clock = new ManualClock(Date.now());
/** Called during the next store read (a test races publications against a recovery this way). */
let duringRead: (() => Promise<void> | void) | null = null;
/** Called before the next position read (a test races a commit against a stream's creation). */
let beforePosition: (() => Promise<void> | void) | null = null;
const history: RoomHistory = {
  lastSeqs: async (roomIds) => {
    const hook = beforePosition;
    beforePosition = null;
    await hook?.();
    return store.lastSeqs(roomIds);
  },
  read: async (roomId, q) => {
    const hook = duringRead;
    duringRead = null;
    await hook?.();
    return (await store.listMessages(roomId, q)).map((m) => ({ seq: m.seq, frame: encodeRoomMessage(roomId, m) }));
  },
};

interface Node {
  broker: MemoryBroker;
  hub: Hub;
  streams: RoomStreams;
  server: Server<unknown>;
  opened: ServerWebSocket<unknown>[];
  closeCodes: number[];
}

const network = new MemoryNetwork();
const nodes: Node[] = [];

async function node(o: { maxBufferedBytes?: number } = {}): Promise<Node> {
  const broker = new MemoryBroker(network);
  await broker.start();
  const maxBufferedBytes = o.maxBufferedBytes ?? 1 << 20;
  const hub = new Hub({ log: silentLogger, maxBufferedBytes, clock, scheduler: clock, sweepIntervalMs: 3_600_000 });
  const streams = new RoomStreams({ broker, hub, history, log: silentLogger, scheduler: clock, gapGraceMs: GRACE, positionIntervalMs: POSITION, lingerMs: LINGER });
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
  streams.start();
  const n = { broker, hub, streams, server, opened, closeCodes };
  nodes.push(n);
  return n;
}

async function connect(n: Node): Promise<{ client: TestSocket; ws: ServerWebSocket<unknown> }> {
  const before = n.opened.length;
  const client = await TestSocket.open(`ws://127.0.0.1:${n.server.port}/`);
  while (n.opened.length === before) await Bun.sleep(1);
  return { client, ws: n.opened.at(-1)! };
}

let roomNo = 0;
async function newRoom(): Promise<string> {
  const id = `room_city_s${roomNo++}-${Math.random().toString(36).slice(2, 7)}`;
  await store.createRoom(
    { id, slug: id.slice(10), name: id, description: null, is_default: false, created_at: new Date().toISOString(), created_by: null, matrix_room_id: null, matrix_room_alias: null },
    { messages: [], events: [] },
  );
  return id;
}

/** Commits `n` messages to the room (as some instance's writer would) and returns them. */
async function commit(roomId: string, n: number): Promise<Message[]> {
  const batch = Array.from({ length: n }, (_, i) => {
    const now = clock.now();
    const message = { id: ids.make("message", now), room_id: roomId, author_user_id: "u_w", author_agent_id: null, body: `b${i}`, created_at: new Date(now).toISOString() };
    const event = { id: ids.make("feedEvent", now), kind: "room_message" as const, room_id: roomId, user_id: "u_w", agent_id: null, payload: {}, created_at: message.created_at };
    return { message, event };
  });
  const first = await store.appendMessages(roomId, batch);
  return batch.map((w, i) => ({ ...w.message, seq: first + i }));
}

const publish = (n: Node, m: Message) => n.streams.publishMessage(m.room_id, m.seq, encodeRoomMessage(m.room_id, m));
const seqs = (c: TestSocket) => c.frames.filter((f) => f.event === "room.message").map((f) => f.message.seq);
const flushAll = async () => {
  for (const n of nodes) await n.broker.flush();
};
/** Publishes a sentinel event on `n` and waits until `client` has it: everything delivered before it has arrived. */
async function sentinel(n: Node, roomId: string, client: TestSocket): Promise<void> {
  const mark = `s${Math.random()}`;
  n.streams.publishEvent(roomId, JSON.stringify({ event: "sentinel", mark }));
  await flushAll();
  await client.next((f) => f.event === "sentinel" && f.mark === mark);
}

beforeAll(() => store.migrate());
afterAll(async () => {
  for (const n of nodes) {
    n.streams.close();
    n.hub.close();
    await n.server.stop(true);
  }
  await store.close();
});

describe("RoomStreams", () => {
  let a: Node;
  let b: Node;
  beforeAll(async () => {
    a = await node();
    b = await node();
  });

  test("delivers in seq order: an early message waits; a gap the broker leaves is read from the store after the grace", async () => {
    const room = await newRoom();
    const { client, ws } = await connect(b);
    b.streams.join(ws, room);
    await b.streams["streams"].get(room)!.positioned;
    const [m1, m2, m3] = await commit(room, 3);
    publish(a, m1!);
    // m2's publication is lost on the way; m3 arrives first
    publish(a, m3!);
    await sentinel(a, room, client);
    expect(seqs(client)).toEqual([1]);
    const filled = b.streams.stats.filledFromStore;
    await clock.advance(GRACE);
    await client.until(() => seqs(client).length === 3);
    expect(seqs(client)).toEqual([1, 2, 3]);
    expect(b.streams.stats.filledFromStore - filled).toBe(1);
    expect(m2!.seq).toBe(2);
  });

  test("a gap the broker fills within the grace is not read from the store; duplicates are dropped", async () => {
    const room = await newRoom();
    const { client, ws } = await connect(b);
    b.streams.join(ws, room);
    await b.streams["streams"].get(room)!.positioned;
    const [m1, m2, m3] = await commit(room, 3);
    const fills = b.streams.stats.gapFills;
    const dups = b.streams.stats.duplicatesDropped;
    publish(a, m1!);
    publish(a, m3!);
    publish(a, m2!);
    publish(a, m2!);
    await sentinel(a, room, client);
    expect(seqs(client)).toEqual([1, 2, 3]);
    await clock.advance(GRACE * 2);
    expect(b.streams.stats.gapFills).toBe(fills);
    expect(b.streams.stats.duplicatesDropped - dups).toBe(1);
  });

  test("a message committed and published while the stream reads its position reaches the sockets that joined before it", async () => {
    const room = await newRoom();
    const { client, ws } = await connect(b);
    let m1: Message | undefined;
    // the socket's own message: committed and published after it joined, before the position read answers
    beforePosition = async () => {
      [m1] = await commit(room, 1);
      publish(a, m1!);
      await flushAll();
    };
    b.streams.join(ws, room);
    await b.streams["streams"].get(room)!.positioned;
    expect(m1?.seq).toBe(1);
    await sentinel(a, room, client);
    expect(seqs(client)).toEqual([1]);
    const [m2] = await commit(room, 1);
    publish(a, m2!);
    await sentinel(a, room, client);
    expect(seqs(client)).toEqual([1, 2]);
  });

  test("a local commit and other instances' commits interleave in seq order on both instances", async () => {
    const room = await newRoom();
    const onA = await connect(a);
    const onB = await connect(b);
    a.streams.join(onA.ws, room);
    b.streams.join(onB.ws, room);
    await a.streams["streams"].get(room)!.positioned;
    await b.streams["streams"].get(room)!.positioned;
    const ms = await commit(room, 6);
    // even seqs committed by A, odd by B; each instance publishes its own as soon as it commits
    for (const m of [ms[1], ms[0], ms[3], ms[2], ms[5], ms[4]]) publish(m!.seq % 2 ? b : a, m!);
    await flushAll();
    await onA.client.until(() => seqs(onA.client).length === 6);
    await onB.client.until(() => seqs(onB.client).length === 6);
    expect(seqs(onA.client)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(seqs(onB.client)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test("positioning: a lost last message is found at the next check and delivered", async () => {
    const room = await newRoom();
    const { client, ws } = await connect(b);
    b.streams.join(ws, room);
    await b.streams["streams"].get(room)!.positioned;
    const [m1] = await commit(room, 2);
    publish(a, m1!);
    await sentinel(a, room, client);
    expect(seqs(client)).toEqual([1]); // seq 2 was committed, its publication lost: no gap to see
    await clock.advance(POSITION + GRACE);
    await client.until(() => seqs(client).length === 2);
    expect(seqs(client)).toEqual([1, 2]);
  });

  test("a broker outage delays live delivery and loses none of it: the link's return triggers a check", async () => {
    const room = await newRoom();
    const { client, ws } = await connect(b);
    b.streams.join(ws, room);
    await b.streams["streams"].get(room)!.positioned;
    b.broker.setLinkDown(true);
    const missed = await commit(room, 3);
    for (const m of missed) publish(a, m);
    await flushAll();
    expect(seqs(client)).toEqual([]);
    const checks = b.streams.stats.positionChecks;
    b.broker.setLinkDown(false);
    expect(b.streams.stats.positionChecks).toBe(checks + 1);
    await b.streams.checkPositions(); // the check the link's return started
    await clock.advance(GRACE);
    await client.until(() => seqs(client).length === 3);
    expect(seqs(client)).toEqual([1, 2, 3]);
  });

  test("recovery sends the store's messages after since, then what was delivered meanwhile, then live: no gap, no duplicate", async () => {
    const room = await newRoom();
    const early = await commit(room, 3);
    const watcher = await connect(b);
    b.streams.join(watcher.ws, room);
    await b.streams["streams"].get(room)!.positioned;
    const { client, ws } = await connect(b);
    const racing = await commit(room, 2); // 4 and 5: committed; their publications race the replay
    duringRead = async () => {
      publish(a, racing[0]!);
      b.streams.publishEvent(room, JSON.stringify({ event: "room.join", user_id: "u_x" }));
      publish(a, racing[1]!);
      await flushAll();
    };
    const result = await b.streams.joinWithRecovery(ws, room, 1, 100);
    expect(result).toEqual({ replayed: 4, truncated: false });
    const [live] = await commit(room, 1);
    publish(a, live!);
    await flushAll();
    await client.until(() => seqs(client).length === 5);
    await sentinel(a, room, client);
    expect(seqs(client)).toEqual([2, 3, 4, 5, 6]);
    expect(client.frames.filter((f) => f.event === "room.join").length).toBe(1);
    expect(early.length).toBe(3);
  });

  test("recovery of more than max sends the newest max and says so", async () => {
    const room = await newRoom();
    await commit(room, 12);
    const { client, ws } = await connect(b);
    expect(await b.streams.joinWithRecovery(ws, room, 0, 5)).toEqual({ replayed: 5, truncated: true });
    await client.until(() => seqs(client).length === 5);
    expect(seqs(client)).toEqual([8, 9, 10, 11, 12]);
  });

  test("an instance subscribes to a room's subject only while it has a socket there (plus the linger)", async () => {
    const room = await newRoom();
    const subject = `city.fanout.room.${room}`;
    expect(b.broker.subscriptions()).not.toContain(subject);
    const { client, ws } = await connect(b);
    b.streams.join(ws, room);
    expect(b.broker.subscriptions()).toContain(subject);
    expect(a.broker.subscriptions()).not.toContain(subject);
    client.close();
    await client.waitClosed();
    b.streams.leave(ws, room, true);
    expect(b.streams.interest(room)).toBe(0);
    expect(b.broker.subscriptions()).toContain(subject); // lingering: a reload comes straight back
    await clock.advance(LINGER);
    expect(b.broker.subscriptions()).not.toContain(subject);
    expect(b.streams.roomCount()).toBe(b.streams["streams"].size);
  });
});

describe("Hub", () => {
  test("a socket whose token expires is closed with 4001 at the next sweep; a refreshed one is not", async () => {
    const n = await node();
    const [x, y] = [await connect(n), await connect(n)];
    (x.ws.data as { expiresAt?: number }).expiresAt = clock.now() + 1000;
    (y.ws.data as { expiresAt?: number }).expiresAt = clock.now() + 1000;
    n.hub.sweep();
    expect(x.ws.readyState).toBe(1);
    await clock.advance(1000);
    (y.ws.data as { expiresAt?: number }).expiresAt = clock.now() + 60_000; // auth.refresh did this
    n.hub.sweep();
    expect((await x.client.waitClosed()).code).toBe(CLOSE.tokenExpired);
    expect(y.client.closed).toBeNull();
    expect(n.hub.stats.tokensExpired).toBe(1);
  });

  test("a socket whose buffer stays over the cap is closed with 4008; a reading socket is not", async () => {
    const cap = 64 * 1024;
    const n = await node({ maxBufferedBytes: cap });
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
      n.hub.publishLocal("flood", chunk);
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
