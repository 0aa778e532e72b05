/**
 * `daarion-city/client/react`: React hooks on the typed client (React ≥ 18 is a peer dependency).
 *
 * - {@link useLivingMapFull}: seed 002 §3 / seed 004 §6.2's hook: `snapshot`, `events`,
 *   `isLoading`, `error`, `connectionStatus`, `refetch`; stream events applied as immutable updates.
 * - {@link useGlobalPresence}: seed 003 §7.1: presence by room slug from `snapshot` and `room.presence`.
 * - {@link useRoom}: one room: messages with history paging, send, typing, members online.
 *
 * Each hook takes the client as an option or from {@link CityClientProvider}.
 */
import { createContext, createElement, useCallback, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import type { LivingMapEvent, LivingMapServerFrame, PresenceServerFrame, RoomServerFrame } from "../engine/frames.ts";
import { CityClient, type ConnectionStatus, type LivingMapSnapshot, type Message, type Room } from "./index.ts";
import { applyLivingMapEvent } from "./living-map.ts";

const CityContext = createContext<CityClient | null>(null);

/** Makes `client` the default of every hook below it. */
export function CityClientProvider(props: { client: CityClient; children?: ReactNode }) {
  return createElement(CityContext.Provider, { value: props.client }, props.children);
}

/** The client from the option, else from {@link CityClientProvider}. @throws Error when neither is there */
export function useCityClient(client?: CityClient): CityClient {
  const ctx = useContext(CityContext);
  const c = client ?? ctx;
  if (!c) throw new Error("daarion-city: pass { client } or render inside <CityClientProvider>");
  return c;
}

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

// ---- the Living Map ----------------------------------------------------------------------------

export interface LivingMapState {
  snapshot: LivingMapSnapshot | null;
  /** The stream's events since the hook mounted, oldest first, at most `maxEvents`. */
  events: LivingMapEvent[];
  isLoading: boolean;
  error: string | null;
  connectionStatus: ConnectionStatus;
  /** Reads the snapshot again over HTTP. */
  refetch: () => Promise<void>;
}

/**
 * Seed 002's `useLivingMapFull`: `GET /living-map/snapshot`, then `/living-map/stream`
 * (reconnecting, resuming by event id). An event for an entity the snapshot already holds is
 * applied in place; any other makes the hook read a fresh snapshot (at most every `refetchMs`).
 * A snapshot older than the one held (by `meta.version`) is ignored.
 */
export function useLivingMapFull(o: { client?: CityClient; maxEvents?: number; refetchMs?: number } = {}): LivingMapState {
  const client = useCityClient(o.client);
  const maxEvents = o.maxEvents ?? 100;
  const refetchMs = o.refetchMs ?? 2000;
  const [snapshot, setSnapshot] = useState<LivingMapSnapshot | null>(null);
  const [events, setEvents] = useState<LivingMapEvent[]>([]);
  const [isLoading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [connectionStatus, setStatus] = useState<ConnectionStatus>("connecting");
  const alive = useRef(true);

  const take = useCallback((next: LivingMapSnapshot) => {
    setSnapshot((prev) => (prev && prev.meta.version > next.meta.version ? prev : next));
    setLoading(false);
  }, []);

  const refetch = useCallback(async () => {
    try {
      const s = await client.livingMap.snapshot();
      if (!alive.current) return;
      take(s);
      setError(null);
    } catch (e) {
      if (!alive.current) return;
      setError(errorText(e));
      setLoading(false);
    }
  }, [client, take]);

  useEffect(() => {
    alive.current = true;
    let pending: ReturnType<typeof setTimeout> | null = null;
    const later = () => {
      if (pending) return;
      pending = setTimeout(() => {
        pending = null;
        void refetch();
      }, refetchMs);
    };
    void refetch();
    const stream = client.livingMapStream({
      onStatus: (s) => alive.current && setStatus(s),
      onFrame: (f: LivingMapServerFrame) => {
        if (!alive.current) return;
        if ("kind" in f && f.kind === "snapshot") {
          const { kind: _, ...snap } = f;
          take(snap);
        } else if ("kind" in f && f.kind === "event") {
          setEvents((prev) => (prev.length >= maxEvents ? [...prev.slice(prev.length - maxEvents + 1), f] : [...prev, f]));
          setSnapshot((prev) => {
            if (!prev) return prev;
            const next = applyLivingMapEvent(prev, f);
            if (next) return next;
            later();
            return prev;
          });
        } else if ("event" in f && f.event === "error") setError(`${f.code}: ${f.message}`);
      },
    });
    return () => {
      alive.current = false;
      if (pending) clearTimeout(pending);
      stream.close();
    };
  }, [client, maxEvents, refetchMs, refetch, take]);

  return { snapshot, events, isLoading, error, connectionStatus, refetch };
}

// ---- presence ----------------------------------------------------------------------------------

/** Seed 003 §7.1's per-room presence for a room list. */
export interface RoomPresenceUI {
  onlineCount: number;
  typingCount: number;
}

export interface GlobalPresenceState {
  presenceBySlug: Record<string, RoomPresenceUI>;
  /** Users seen coming online or going offline (`presence.update`), by user id. */
  users: Record<string, "online" | "offline">;
  /** `ok` or `unknown` with a Matrix homeserver configured; null without one. */
  matrixPresence: "ok" | "unknown" | null;
  connectionStatus: ConnectionStatus;
}

/**
 * Seed 003 §7's `useGlobalPresence`: opens `/ws/city/presence` (needs a token; it heartbeats for
 * the token's user), replaces the map on `snapshot`, updates one room on `room.presence`.
 */
export function useGlobalPresence(o: { client?: CityClient; counts?: boolean } = {}): GlobalPresenceState {
  const client = useCityClient(o.client);
  const [presenceBySlug, setPresence] = useState<Record<string, RoomPresenceUI>>({});
  const [users, setUsers] = useState<Record<string, "online" | "offline">>({});
  const [matrixPresence, setMatrix] = useState<"ok" | "unknown" | null>(null);
  const [connectionStatus, setStatus] = useState<ConnectionStatus>("connecting");
  useEffect(() => {
    let alive = true;
    const socket = client.presenceSocket({
      counts: o.counts,
      onStatus: (s) => alive && setStatus(s),
      onFrame: (f: PresenceServerFrame) => {
        if (!alive) return;
        if ("type" in f && f.type === "snapshot") {
          const next: Record<string, RoomPresenceUI> = {};
          for (const r of f.rooms) next[r.room_slug] = { onlineCount: r.online_count, typingCount: r.typing_count };
          setPresence(next);
          setMatrix(f.matrix_presence ?? null);
        } else if ("type" in f && f.type === "room.presence") {
          setPresence((prev) => ({ ...prev, [f.room_slug]: { onlineCount: f.online_count, typingCount: f.typing_count } }));
        } else if ("event" in f && f.event === "presence.update") {
          setUsers((prev) => ({ ...prev, [f.user_id]: f.status }));
        }
      },
    });
    return () => {
      alive = false;
      socket.close();
    };
  }, [client, o.counts]);
  return { presenceBySlug, users, matrixPresence, connectionStatus };
}

// ---- one room ----------------------------------------------------------------------------------

export interface RoomState {
  room: Room | null;
  /** In seq order, oldest first, each once. */
  messages: Message[];
  membersOnline: number;
  /** Users who sent `room.typing` in the last `typingMs`. */
  typingUsers: string[];
  /** Whether older messages exist before the first one held. */
  hasOlder: boolean;
  isLoading: boolean;
  error: string | null;
  connectionStatus: ConnectionStatus;
  /** Posts a message over HTTP; resolves with it once committed. @throws CityApiError */
  send: (body: string) => Promise<Message>;
  /** Tells the room the user is typing. */
  typing: () => void;
  /** Reads the page before the first message held (`limit` 50). */
  loadOlder: () => Promise<void>;
}

const PAGE = 50;

function mergeMessages(prev: Message[], add: Message[]): Message[] {
  if (add.length === 0) return prev;
  const bySeq = new Map<number, Message>();
  for (const m of prev) bySeq.set(m.seq, m);
  let changed = false;
  for (const m of add) {
    if (!bySeq.has(m.seq)) {
      bySeq.set(m.seq, m);
      changed = true;
    }
  }
  return changed ? [...bySeq.values()].sort((a, b) => a.seq - b.seq) : prev;
}

/**
 * One room: its last messages over HTTP, then its socket resuming after the last seq read, so no
 * message is missed between the two or shown twice; `loadOlder` pages back with `before`.
 */
export function useRoom(roomId: string, o: { client?: CityClient; typingMs?: number } = {}): RoomState {
  const client = useCityClient(o.client);
  const typingMs = o.typingMs ?? 6000;
  const [room, setRoom] = useState<Room | null>(null);
  const [messages, setMessages] = useState<Message[]>([]);
  const [membersOnline, setMembers] = useState(0);
  const [typingUsers, setTyping] = useState<string[]>([]);
  const [hasOlder, setHasOlder] = useState(false);
  const [isLoading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [connectionStatus, setStatus] = useState<ConnectionStatus>("connecting");
  const socketRef = useRef<ReturnType<CityClient["roomSocket"]> | null>(null);
  const messagesRef = useRef<Message[]>([]);
  messagesRef.current = messages;

  useEffect(() => {
    let alive = true;
    const typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
    let membersTimer: ReturnType<typeof setTimeout> | null = null;
    setRoom(null);
    setMessages([]);
    setTyping([]);
    setLoading(true);
    setError(null);
    const refreshMembers = () => {
      if (membersTimer) return;
      membersTimer = setTimeout(() => {
        membersTimer = null;
        client.room(roomId).then((d) => alive && setMembers(d.members_online), () => {});
      }, 300);
    };
    client.room(roomId).then(
      (d) => {
        if (!alive) return;
        setRoom(d.room);
        setMessages((prev) => mergeMessages(prev, d.messages));
        setMembers(d.members_online);
        setHasOlder(d.messages.length > 0 && d.messages[0]!.seq > 1);
        setLoading(false);
        const last = d.messages.at(-1)?.seq ?? 0;
        socketRef.current = client.roomSocket(roomId, {
          since: last,
          onStatus: (s) => alive && setStatus(s),
          onFrame: (f: RoomServerFrame) => {
            if (!alive) return;
            switch (f.event) {
              case "room.message":
                setMessages((prev) => mergeMessages(prev, [{ ...f.message, room_id: f.room_id }]));
                if (f.message.author_user_id) {
                  const who = f.message.author_user_id;
                  clearTimeout(typingTimers.get(who));
                  typingTimers.delete(who);
                  setTyping((prev) => prev.filter((u) => u !== who));
                }
                break;
              case "room.typing": {
                const who = f.user_id;
                clearTimeout(typingTimers.get(who));
                typingTimers.set(who, setTimeout(() => {
                  typingTimers.delete(who);
                  if (alive) setTyping((prev) => prev.filter((u) => u !== who));
                }, typingMs));
                setTyping((prev) => (prev.includes(who) ? prev : [...prev, who]));
                break;
              }
              case "room.presence":
              case "room.join":
              case "room.leave":
                refreshMembers();
                break;
              case "error":
                setError(`${f.code}: ${f.message}`);
                break;
            }
          },
        });
      },
      (e) => {
        if (!alive) return;
        setError(errorText(e));
        setLoading(false);
      },
    );
    return () => {
      alive = false;
      for (const t of typingTimers.values()) clearTimeout(t);
      if (membersTimer) clearTimeout(membersTimer);
      socketRef.current?.close();
      socketRef.current = null;
    };
  }, [client, roomId, typingMs]);

  const send = useCallback(
    async (body: string) => {
      const m = await client.sendMessage(roomId, body);
      setMessages((prev) => mergeMessages(prev, [m]));
      return m;
    },
    [client, roomId],
  );
  const typing = useCallback(() => void socketRef.current?.typing(), []);
  const loadOlder = useCallback(async () => {
    const first = messagesRef.current[0];
    if (!first) return;
    try {
      const page = await client.messages(roomId, { before: first.seq, limit: PAGE });
      setMessages((prev) => mergeMessages(prev, page));
      setHasOlder(page.length === PAGE && page[0]!.seq > 1);
    } catch (e) {
      setError(errorText(e));
    }
  }, [client, roomId]);

  return { room, messages, membersOnline, typingUsers, hasOlder, isLoading, error, connectionStatus, send, typing, loadOlder };
}
