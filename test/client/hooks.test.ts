/**
 * The React hooks (`daarion-city/client/react`) rendered with react-dom in a DOM implementation
 * (happy-dom) against the compiled binary: its embedded store, NATS for the Living Map. No mocks:
 * every frame a hook sees comes from the binary over a real socket.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { GlobalRegistrator } from "@happy-dom/global-registrator";
import { connect, type NatsConnection } from "nats";
import { createElement } from "react";
import type { Root } from "react-dom/client";
import { CityClient } from "daarion-city/client";
import { CityClientProvider, useGlobalPresence, useLivingMapFull, useRoom } from "daarion-city/client/react";
import { binaryToken, startBinary, stopBinary, type RunningBinary } from "../helpers/binary.ts";
import { waitFor } from "../helpers/city.ts";
import { engineUrl, randomSuffix } from "../helpers/engines.ts";

const nats = engineUrl("NATS_URL", "React hooks on the binary");
// The runtime's own fetch and WebSocket talk to the binary; happy-dom's would apply a page's CORS.
const realFetch = globalThis.fetch;
const RealWebSocket = globalThis.WebSocket;

describe.skipIf(!nats)("React hooks on the compiled binary", () => {
  const prefix = `t_${randomSuffix()}`;
  const env: Record<string, string> = {
    JWT_SECRET: "hooks-secret-0123456789-abcdefghijkl", NATS_URL: nats!, NATS_SUBJECT_PREFIX: prefix, LIVING_MAP_JETSTREAM: "off", LOG_LEVEL: "info",
    CITY_WRITE_RATE_PER_SECOND: "1000", CITY_WRITE_BURST: "1000", ROOM_PRESENCE_THROTTLE_MS: "100",
  };
  let city: RunningBinary;
  let nc: NatsConnection;
  let createRoot: typeof import("react-dom/client").createRoot;
  const roots: Root[] = [];
  const clients: { close(): void }[] = [];

  const clientFor = (user: string | null) =>
    new CityClient({ baseUrl: city.url, token: user ? binaryToken(env, user) : null, fetch: realFetch, WebSocket: RealWebSocket });

  /** Renders `hook` inside a provider; `result.current` is its latest return value. */
  const renderHook = <T>(client: CityClient, hook: () => T) => {
    const result = { current: undefined as unknown as T, renders: 0 };
    function Probe() {
      result.current = hook();
      result.renders++;
      return null;
    }
    const root = createRoot(document.createElement("div"));
    roots.push(root);
    root.render(createElement(CityClientProvider, { client }, createElement(Probe)));
    return { result, unmount: () => root.unmount() };
  };

  beforeAll(async () => {
    city = await startBinary(env);
    nc = await connect({ servers: nats! });
    GlobalRegistrator.register({ url: city.url });
    (globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;
    // react-dom decides at load whether a DOM exists: load it once happy-dom is in place.
    ({ createRoot } = await import("react-dom/client"));
  });

  afterAll(async () => {
    for (const r of roots) r.unmount();
    for (const c of clients) c.close();
    await Bun.sleep(50); // let React's scheduler finish the unmounts while the DOM globals are still there
    if (GlobalRegistrator.isRegistered) await GlobalRegistrator.unregister();
    await nc?.close();
    if (city) await stopBinary(city);
  });

  test("useRoom: the last 50 messages, older pages on demand, live messages and its own sends each once, typing, members online", async () => {
    const alice = clientFor("u_alice");
    const slug = `hooks_${randomSuffix()}`;
    const room = await alice.createRoom({ name: "Hooks", slug });
    for (let i = 1; i <= 60; i++) await alice.sendMessage(room.id, `m${i}`);
    const { result } = renderHook(alice, () => useRoom(room.id));
    await waitFor(() => result.current, (r) => !!r && !r.isLoading && r.connectionStatus === "open");
    expect(result.current.messages.map((m) => m.body)).toEqual(Array.from({ length: 50 }, (_, i) => `m${i + 11}`));
    expect(result.current.hasOlder).toBe(true);
    await result.current.loadOlder();
    await waitFor(() => result.current.messages.length, (n) => n === 60);
    expect(result.current.messages.map((m) => m.seq)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(result.current.hasOlder).toBe(false);

    // Another user's message arrives live; the hook's own send shows once (HTTP answer + socket echo).
    const bob = clientFor("u_bob");
    await bob.sendMessage(room.id, "from bob");
    await waitFor(() => result.current.messages.at(-1)?.body, (b) => b === "from bob");
    const mine = await result.current.send("from alice");
    await waitFor(() => result.current.messages.at(-1)?.id, (id) => id === mine.id);
    const sentinel = await bob.sendMessage(room.id, "sentinel");
    await waitFor(() => result.current.messages.at(-1)?.id, (id) => id === sentinel.id);
    expect(result.current.messages.filter((m) => m.id === mine.id)).toHaveLength(1);
    expect(result.current.messages.map((m) => m.seq)).toEqual(Array.from({ length: 63 }, (_, i) => i + 1));

    // Bob in the room, heartbeating and typing: the hook sees him type and counts him.
    const presence = bob.presenceSocket({ counts: true });
    const bobRoom = bob.roomSocket(room.id);
    clients.push(presence, bobRoom);
    await waitFor(() => bobRoom.status, (s) => s === "open");
    bobRoom.typing();
    await waitFor(() => result.current.typingUsers, (u) => u.includes("u_bob"));
    // A user counts while they hold a socket in the room and heartbeat: alice's hook holds the room
    // but she has not heartbeated yet, so only bob counts until her presence socket opens.
    await waitFor(() => result.current.membersOnline, (n) => n === 1);
    const alicePresence = alice.presenceSocket({ counts: true });
    clients.push(alicePresence);
    await waitFor(() => result.current.membersOnline, (n) => n === 2);
  });

  test("useGlobalPresence: the snapshot of every room, then a room's count going up and down", async () => {
    const carol = clientFor("u_carol");
    const { result } = renderHook(carol, () => useGlobalPresence());
    await waitFor(() => result.current, (r) => !!r && r.connectionStatus === "open" && Object.keys(r.presenceBySlug).length >= 5);
    expect(result.current.presenceBySlug.energy).toEqual({ onlineCount: 0, typingCount: 0 });

    const dave = clientFor("u_dave");
    const presence = dave.presenceSocket({ counts: true });
    const inRoom = dave.roomSocket("room_city_energy");
    await waitFor(() => result.current.presenceBySlug.energy?.onlineCount, (n) => n === 1);
    inRoom.typing();
    await waitFor(() => result.current.presenceBySlug.energy?.typingCount, (n) => n === 1);
    inRoom.close();
    presence.close();
    await waitFor(() => result.current.presenceBySlug.energy?.onlineCount, (n) => n === 0);
  });

  test("useLivingMapFull: snapshot, stream, events applied as immutable updates, refetch", async () => {
    const erin = clientFor("u_erin");
    const { result } = renderHook(erin, () => useLivingMapFull({ refetchMs: 100 }));
    await waitFor(() => result.current, (r) => !!r && !r.isLoading && r.connectionStatus === "open" && r.snapshot !== null);
    expect(result.current.error).toBeNull();
    expect(result.current.snapshot!.meta.sources.map((s) => s.name)).toContain("city-service");

    const node = `hook-${randomSuffix()}`;
    const cpuOf = (s: typeof result.current.snapshot) => (s?.layers.nodes.items as { id: string; metrics: { cpu?: number } }[] | undefined)?.find((n) => n.id === `node:${node}`)?.metrics.cpu;
    // A node the snapshot does not hold yet: the hook reads a fresh snapshot.
    nc.publish(`${prefix}.node.metrics.${node}`, JSON.stringify({ cpu: 10, status: "online" }));
    await waitFor(() => cpuOf(result.current.snapshot), (c) => c === 10);
    const held = result.current.snapshot;
    // A node it holds: applied in place, as a new object; the one held before is unchanged.
    nc.publish(`${prefix}.node.metrics.${node}`, JSON.stringify({ cpu: 77 }));
    await waitFor(() => cpuOf(result.current.snapshot), (c) => c === 77);
    expect(cpuOf(held)).toBe(10);
    expect(result.current.events.filter((e) => e.event_type === `node.metrics.${node}`).map((e) => e.payload.cpu)).toEqual([10, 77]);

    const version = result.current.snapshot!.meta.version;
    await result.current.refetch();
    await waitFor(() => result.current.snapshot!.meta.version, (v) => v >= version);
    expect(cpuOf(result.current.snapshot)).toBe(77);
  });
});
