/**
 * `daarion-city/client`: the typed client of the DAARION City realtime backend, for browsers and
 * Bun. HTTP (rooms, messages, feed, Second Me, the Living Map) and the three sockets, each
 * reconnecting with backoff and jitter and resuming with its cursor (a room by `seq`, the Living
 * Map by event id), so a client misses nothing and sees nothing twice.
 *
 * Frame and body types come from the server's own TypeBox schemas (`src/engine/frames.ts`, the
 * route models) by type-only imports: nothing of the server is bundled into a page.
 */
import type { Static } from "@sinclair/typebox";
import type {
  ErrorEvent,
  LivingMapEvent,
  LivingMapServerFrame,
  LivingMapSnapshotData,
  PresenceClientFrame,
  PresenceServerFrame,
  RoomClientFrame,
  RoomMessage,
  RoomServerFrame,
} from "../engine/frames.ts";
import type { FeedEventModel, MembershipModel, MessageModel, RoomDetailModel, RoomListItemModel, RoomModel } from "../modules/city/model.ts";
import type { EntityItemModel, EntityModel, HistoryItemModel } from "../modules/living-map/model.ts";
import type { HistoryEntry, SecondMeProfile } from "../modules/secondme/service.ts";
import { ReconnectingSocket, realTimers, tokenSubject, type BackoffOptions, type ClientTimers, type ConnectionStatus } from "./socket.ts";

export type { ConnectionStatus, BackoffOptions, ClientTimers } from "./socket.ts";
export { backoffDelay, tokenExpiry, tokenSubject } from "./socket.ts";
export type * from "../engine/frames.ts";

export type Room = Static<typeof RoomModel>;
export type RoomListItem = Static<typeof RoomListItemModel>;
export type RoomDetail = Static<typeof RoomDetailModel>;
export type Message = Static<typeof MessageModel>;
export type FeedEvent = Static<typeof FeedEventModel>;
export type Membership = Static<typeof MembershipModel>;
export type LivingMapSnapshot = LivingMapSnapshotData;
export type LivingMapEntityItem = Static<typeof EntityItemModel>;
export type LivingMapEntity = Static<typeof EntityModel>;
export type LivingMapHistoryItem = Static<typeof HistoryItemModel>;
export type { HistoryEntry as SecondMeHistoryEntry, SecondMeProfile };

/** A token, or where to get the current one (called before each request and each socket attempt). */
export type TokenSource = string | null | (() => string | null | Promise<string | null>);

export interface CityClientOptions {
  /** The server, e.g. `http://127.0.0.1:7001` (default: the page's own origin in a browser). */
  baseUrl?: string;
  token?: TokenSource;
  /** Socket reconnect backoff (default 500 ms doubling to 30 s, full jitter). */
  backoff?: BackoffOptions;
  /** Refresh a socket's token this long before it expires (default 30 s). */
  refreshBeforeMs?: number;
  /** Heartbeat period of the presence socket (default 20 s, as the server expects). */
  heartbeatMs?: number;
  timers?: ClientTimers;
  fetch?: typeof fetch;
  WebSocket?: typeof WebSocket;
}

/** An HTTP refusal in the server's error shape (`{error:{code, message}}`). */
export class CityApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Seconds from `Retry-After` (429, 503), if given. */
    readonly retryAfterSeconds: number | null = null,
  ) {
    super(message);
    this.name = "CityApiError";
  }
}

const query = (q: Record<string, string | number | undefined | null>): string => {
  const parts = Object.entries(q).filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => `${k}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join("&")}` : "";
};

/**
 * The client. One per server and identity; sockets it opens share its token source.
 * Every HTTP method throws {@link CityApiError} on a refusal and `TypeError` when the server is unreachable.
 */
export class CityClient {
  readonly baseUrl: string;
  private readonly o: CityClientOptions;

  constructor(o: CityClientOptions = {}) {
    this.o = o;
    const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
    const base = o.baseUrl ?? (origin && origin !== "null" ? origin : undefined);
    if (!base) throw new TypeError("CityClient: baseUrl is needed outside a browser page");
    this.baseUrl = base.replace(/\/+$/, "");
  }

  /** The current token (null: anonymous). */
  async token(): Promise<string | null> {
    const t = this.o.token;
    return typeof t === "function" ? await t() : (t ?? null);
  }

  /** The user id in the current token (`sub`), or null. */
  async userId(): Promise<string | null> {
    return tokenSubject(await this.token());
  }

  /**
   * One HTTP call.
   * @throws CityApiError on a status ≥ 400 (with the server's code), TypeError when unreachable
   */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    const token = await this.token();
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await (this.o.fetch ?? fetch)(`${this.baseUrl}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: reported below when the status is an error
    }
    if (!res.ok) {
      const err = (json as { error?: { code?: string; message?: string } } | null)?.error;
      const retry = res.headers.get("retry-after");
      throw new CityApiError(res.status, err?.code ?? "http_error", err?.message ?? `HTTP ${res.status}`, retry ? Number(retry) : null);
    }
    return json as T;
  }

  // ---- rooms and messages (SPEC "HTTP API") ----

  rooms(o: { limit?: number; offset?: number } = {}): Promise<RoomListItem[]> {
    return this.request("GET", `/city/rooms${query(o)}`);
  }
  room(roomId: string): Promise<RoomDetail> {
    return this.request("GET", `/city/rooms/${encodeURIComponent(roomId)}`);
  }
  createRoom(body: { name: string; slug: string; description?: string | null }): Promise<Room> {
    return this.request("POST", "/city/rooms", body);
  }
  /** A page of messages in seq order (oldest first); `before` a seq or message id pages back. */
  messages(roomId: string, o: { before?: number | string; limit?: number } = {}): Promise<Message[]> {
    return this.request("GET", `/city/rooms/${encodeURIComponent(roomId)}/messages${query(o)}`);
  }
  /** Posts a message; resolves once it is committed (HTTP 201). */
  sendMessage(roomId: string, body: string): Promise<Message> {
    return this.request("POST", `/city/rooms/${encodeURIComponent(roomId)}/messages`, { body });
  }
  join(roomId: string): Promise<Membership> {
    return this.request("POST", `/city/rooms/${encodeURIComponent(roomId)}/join`);
  }
  leave(roomId: string): Promise<Membership> {
    return this.request("POST", `/city/rooms/${encodeURIComponent(roomId)}/leave`);
  }
  feed(o: { before?: string; limit?: number } = {}): Promise<FeedEvent[]> {
    return this.request("GET", `/city/feed${query(o)}`);
  }

  // ---- Second Me ----

  readonly secondme = {
    invoke: (prompt: string): Promise<{ reply: string; history: HistoryEntry[] }> => this.request("POST", "/secondme/invoke", { prompt }),
    history: (limit = 5): Promise<HistoryEntry[]> => this.request("GET", `/secondme/history${query({ limit })}`),
    profile: (): Promise<SecondMeProfile> => this.request("GET", "/secondme/profile"),
    clear: (): Promise<{ cleared: number }> => this.request("POST", "/secondme/history/clear"),
  };

  // ---- the Living Map ----

  readonly livingMap = {
    snapshot: (): Promise<LivingMapSnapshot> => this.request("GET", "/living-map/snapshot"),
    entities: (o: { type?: string; limit?: number } = {}): Promise<{ items: LivingMapEntityItem[] }> => this.request("GET", `/living-map/entities${query(o)}`),
    entity: (id: string): Promise<LivingMapEntity> => this.request("GET", `/living-map/entities/${encodeURIComponent(id)}`),
    history: (o: { since?: string; before?: string; limit?: number } = {}): Promise<{ items: LivingMapHistoryItem[] }> =>
      this.request("GET", `/living-map/history${query(o)}`),
  };

  // ---- sockets ----

  private wsUrl(path: string, q: Record<string, string | number | undefined | null>): string {
    return `${this.baseUrl.replace(/^http/, "ws")}${path}${query(q)}`;
  }

  /**
   * A room's socket. Messages arrive once each, in seq order, across reconnects: every attempt
   * resumes with `since=<last seq seen>`, and anything at or below it is dropped.
   * @param o.since start after this seq (default: live only)
   */
  roomSocket(roomId: string, o: { since?: number; onMessage?: (m: RoomMessage) => void; onFrame?: (f: RoomServerFrame) => void; onStatus?: (s: ConnectionStatus) => void; onError?: (e: ErrorEvent) => void } = {}): RoomConnection {
    return new RoomConnection(this, roomId, o);
  }

  /**
   * The presence socket: room numbers (`snapshot`, then `room.presence`) and per-user
   * `presence.update`; it heartbeats every `heartbeatMs` while open.
   * @param o.counts only the room numbers (`?events=counts`)
   */
  presenceSocket(o: { counts?: boolean; onFrame?: (f: PresenceServerFrame) => void; onStatus?: (s: ConnectionStatus) => void } = {}): PresenceConnection {
    return new PresenceConnection(this, o, this.o.heartbeatMs ?? 20_000, this.o.timers ?? realTimers);
  }

  /** The Living Map stream: a snapshot, then events; each reconnect resumes with `since=<last event id>`. */
  livingMapStream(o: { since?: string; onFrame?: (f: LivingMapServerFrame) => void; onStatus?: (s: ConnectionStatus) => void } = {}): LivingMapConnection {
    return new LivingMapConnection(this, o);
  }

  /** @internal builds a reconnecting socket for the connection classes below */
  open<Out, In>(path: string, q: () => Record<string, string | number | undefined | null>, handlers: { onFrame: (f: Out) => void; onStatus: (s: ConnectionStatus) => void; onOpen?: () => void; onRefused?: () => void }) {
    return new ReconnectingSocket<Out, In>({
      ...handlers,
      url: async () => this.wsUrl(path, { ...q(), token: (await this.token()) ?? undefined }),
      token: () => this.token(),
      backoff: this.o.backoff,
      refreshBeforeMs: this.o.refreshBeforeMs,
      timers: this.o.timers,
      WebSocket: this.o.WebSocket,
    });
  }
}

/** A room socket that resumes by seq. `lastSeq` is the highest seq delivered. */
export class RoomConnection {
  lastSeq: number | null;
  private readonly socket: ReconnectingSocket<RoomServerFrame, RoomClientFrame>;

  constructor(
    client: CityClient,
    readonly roomId: string,
    o: { since?: number; onMessage?: (m: RoomMessage) => void; onFrame?: (f: RoomServerFrame) => void; onStatus?: (s: ConnectionStatus) => void; onError?: (e: ErrorEvent) => void },
  ) {
    this.lastSeq = o.since ?? null;
    this.socket = client.open<RoomServerFrame, RoomClientFrame>(`/ws/city/rooms/${encodeURIComponent(roomId)}`, () => ({ since: this.lastSeq ?? undefined }), {
      onFrame: (f) => {
        if (f.event === "room.message") {
          if (this.lastSeq !== null && f.message.seq <= this.lastSeq) return;
          this.lastSeq = f.message.seq;
          o.onMessage?.(f);
        } else if (f.event === "error") o.onError?.(f);
        o.onFrame?.(f);
      },
      onStatus: (s) => o.onStatus?.(s),
    });
  }

  get status(): ConnectionStatus {
    return this.socket.status;
  }
  /** Sends a message over the socket (no answer but its `room.message` echo; prefer {@link CityClient.sendMessage} to know it is committed). */
  send(body: string): boolean {
    return this.socket.send({ event: "room.message.send", room_id: this.roomId, body });
  }
  /** Says the user is typing (the server announces it at most every few seconds). */
  typing(): boolean {
    return this.socket.send({ event: "room.typing", room_id: this.roomId });
  }
  close(): void {
    this.socket.close();
  }
}

/** The presence socket; heartbeats while open. */
export class PresenceConnection {
  private readonly socket: ReconnectingSocket<PresenceServerFrame, PresenceClientFrame>;
  private beat: unknown = null;

  constructor(client: CityClient, o: { counts?: boolean; onFrame?: (f: PresenceServerFrame) => void; onStatus?: (s: ConnectionStatus) => void }, heartbeatMs: number, private readonly timers: ClientTimers) {
    const heartbeat = async () => {
      const user_id = (await client.userId()) ?? undefined;
      this.socket.send({ event: "presence.heartbeat", user_id });
      this.timers.clearTimeout(this.beat);
      this.beat = this.timers.setTimeout(() => void heartbeat(), heartbeatMs);
    };
    this.socket = client.open<PresenceServerFrame, PresenceClientFrame>("/ws/city/presence", () => ({ events: o.counts ? "counts" : undefined }), {
      onFrame: (f) => o.onFrame?.(f),
      onStatus: (s) => {
        if (s !== "open") this.timers.clearTimeout(this.beat);
        o.onStatus?.(s);
      },
      onOpen: () => void heartbeat(),
    });
  }

  get status(): ConnectionStatus {
    return this.socket.status;
  }
  close(): void {
    this.timers.clearTimeout(this.beat);
    this.socket.close();
  }
}

/** The Living Map stream; resumes by event id. */
export class LivingMapConnection {
  lastEventId: string | null;
  private readonly socket: ReconnectingSocket<LivingMapServerFrame, never>;

  constructor(client: CityClient, o: { since?: string; onFrame?: (f: LivingMapServerFrame) => void; onStatus?: (s: ConnectionStatus) => void }) {
    this.lastEventId = o.since ?? null;
    this.socket = client.open<LivingMapServerFrame, never>("/living-map/stream", () => ({ since: this.lastEventId ?? undefined }), {
      onFrame: (f) => {
        if ("kind" in f && f.kind === "event") this.lastEventId = f.id;
        else if ("kind" in f && f.kind === "snapshot") this.lastEventId = f.meta.last_event_id ?? this.lastEventId;
        o.onFrame?.(f);
      },
      onStatus: (s) => o.onStatus?.(s),
      // An id the map no longer knows refuses the upgrade (400 invalid_cursor): the next attempt
      // starts from a fresh snapshot, which holds everything the events would have brought.
      onRefused: () => (this.lastEventId = null),
    });
  }

  get status(): ConnectionStatus {
    return this.socket.status;
  }
  /** Connects again now (the server sends a fresh snapshot or what was missed). */
  reconnect(): void {
    this.socket.reconnect();
  }
  close(): void {
    this.socket.close();
  }
}

export type { LivingMapEvent };
