/**
 * A spec-shaped fake Matrix homeserver for the presence aggregator's tests (what the Matrix brief's
 * last section asks of it), started as a real HTTP server on 127.0.0.1.
 *
 * It serves `/login` (m.login.password), `/user/{id}/filter` (upload), `/sync`, `/directory/room/
 * {alias}` and `/rooms/{id}/joined_members`, and keeps an event log with stream positions:
 * - `timeout=0` answers at once; otherwise the request long-polls until something happens.
 * - Empty sections are left out; filter lists: absent = everything, empty = nothing.
 * - 400 `M_UNKNOWN` for a `since` it did not issue, 400 `M_INVALID_PARAM` for an unknown filter id,
 *   401 `M_UNKNOWN_TOKEN` with `soft_logout` for a token it does not know.
 * - Presence: a snapshot (every user not offline who shares a room with the syncing user) only on
 *   initial or `full_state` syncs, changes otherwise; nothing at all when presence is disabled.
 * - Typing: the full list on each change. Receipts: changes; an initial sync carries history.
 * Tests inject failures (`failSyncs`), rate limits, stuck `next_batch` values and `limited`
 * timelines, and read how many requests each endpoint got.
 */
import type { Server } from "bun";

type Entry =
  | { pos: number; kind: "presence"; user: string; presence: string; lastActiveAgo?: number }
  | { pos: number; kind: "member"; room: string; user: string; membership: string }
  | { pos: number; kind: "typing"; room: string }
  | { pos: number; kind: "receipt"; room: string; user: string; eventId: string; ts: number };

type DistributiveOmit<T, K extends keyof T> = T extends unknown ? Omit<T, K> : never;

interface FakeRoom {
  members: Set<string>;
  typing: string[];
  receipts: { user: string; eventId: string; ts: number }[];
}

interface Failure {
  status: number;
  body: Record<string, unknown>;
  headers?: Record<string, string>;
}

export class FakeHomeserver {
  readonly serverName: string;
  private server: Server<unknown> | null = null;
  private readonly tokens = new Map<string, string>();
  private readonly passwords = new Map<string, string>();
  private readonly filters = new Map<string, Record<string, unknown>>();
  private readonly rooms = new Map<string, FakeRoom>();
  private readonly aliases = new Map<string, string>();
  private readonly presence = new Map<string, { presence: string; lastActiveAgo?: number }>();
  private readonly log: Entry[] = [];
  private pos = 1;
  private readonly waiters = new Set<() => void>();
  private readonly syncFailures: Failure[] = [];
  private readonly limitedNext = new Set<string>();
  private stuck: string | null = null;
  presenceEnabled = true;
  /** Requests per endpoint (`sync`, `filter`, `login`, `directory`, `members`), and every sync's query. */
  readonly requests = { sync: 0, filter: 0, login: 0, directory: 0, members: 0 };
  readonly syncQueries: URLSearchParams[] = [];

  constructor(serverName = "city.test") {
    this.serverName = serverName;
  }

  get url(): string {
    return `http://127.0.0.1:${this.server!.port}`;
  }

  start(port = 0): this {
    this.server = Bun.serve({ hostname: "127.0.0.1", port, fetch: (req) => this.handle(req) });
    return this;
  }

  stop(): void {
    for (const w of this.waiters) w();
    this.server?.stop(true);
  }

  // ---- scenario -----------------------------------------------------------------------------

  /** Registers a user; `token` is accepted as theirs, `password` for `/login`. */
  addUser(userId: string, opts: { token?: string; password?: string } = {}): void {
    if (opts.token) this.tokens.set(opts.token, userId);
    if (opts.password) this.passwords.set(userId, opts.password);
  }

  /** Invalidates a token (the next request with it gets 401 `M_UNKNOWN_TOKEN`). */
  revokeToken(token: string): void {
    this.tokens.delete(token);
  }

  createRoom(roomId: string, alias?: string): void {
    this.rooms.set(roomId, { members: new Set(), typing: [], receipts: [] });
    if (alias) this.aliases.set(alias, roomId);
  }

  join(roomId: string, userId: string): void {
    this.rooms.get(roomId)!.members.add(userId);
    this.append({ kind: "member", room: roomId, user: userId, membership: "join" });
  }

  leave(roomId: string, userId: string): void {
    this.rooms.get(roomId)!.members.delete(userId);
    this.append({ kind: "member", room: roomId, user: userId, membership: "leave" });
  }

  setPresence(userId: string, presence: string, lastActiveAgo?: number): void {
    this.presence.set(userId, { presence, lastActiveAgo });
    if (this.presenceEnabled) this.append({ kind: "presence", user: userId, presence, lastActiveAgo });
  }

  setTyping(roomId: string, userIds: string[]): void {
    this.rooms.get(roomId)!.typing = [...userIds];
    this.append({ kind: "typing", room: roomId });
  }

  receipt(roomId: string, userId: string, ts: number): void {
    const eventId = `$ev${this.pos}`;
    this.rooms.get(roomId)!.receipts.push({ user: userId, eventId, ts });
    this.append({ kind: "receipt", room: roomId, user: userId, eventId, ts });
  }

  /** The next `n` syncs answer `status` with `body` (and `headers`). */
  failSyncs(n: number, status: number, body: Record<string, unknown>, headers?: Record<string, string>): void {
    for (let i = 0; i < n; i++) this.syncFailures.push({ status, body, headers });
  }

  /** Forgets every uploaded filter (the next sync with an old id gets 400 `M_INVALID_PARAM`). */
  forgetFilters(): void {
    this.filters.clear();
  }

  /** The next incremental sync reports this room's timeline as `limited` (and leaves its events out). */
  limitNext(roomId: string): void {
    this.limitedNext.add(roomId);
  }

  /** While set, every incremental sync answers at once, empty, with this same `next_batch` (a Synapse tight loop). */
  stickNextBatch(token: string | null): void {
    this.stuck = token;
  }

  /** The `next_batch` this server would give now. */
  currentBatch(): string {
    return `s${this.pos - 1}`;
  }

  // ---- HTTP ---------------------------------------------------------------------------------

  private append(e: DistributiveOmit<Entry, "pos">): void {
    this.log.push({ ...e, pos: this.pos++ } as Entry);
    for (const w of [...this.waiters]) w();
  }

  private async handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const p = url.pathname;
    if (p === "/_matrix/client/v3/login" && req.method === "POST") return this.login(await req.json());
    const user = this.tokens.get((req.headers.get("authorization") ?? "").replace(/^Bearer /, ""));
    if (!user) return json(401, { errcode: "M_UNKNOWN_TOKEN", error: "Invalid access token passed.", soft_logout: true });
    let m = /^\/_matrix\/client\/v3\/user\/([^/]+)\/filter$/.exec(p);
    if (m && req.method === "POST") {
      this.requests.filter++;
      const id = String(this.filters.size + 1 + Math.floor(Math.random() * 1e6));
      this.filters.set(id, (await req.json()) as Record<string, unknown>);
      return json(200, { filter_id: id });
    }
    if (p === "/_matrix/client/v3/sync") return this.sync(user, url.searchParams);
    m = /^\/_matrix\/client\/v3\/directory\/room\/(.+)$/.exec(p);
    if (m) {
      this.requests.directory++;
      const id = this.aliases.get(decodeURIComponent(m[1]!));
      return id ? json(200, { room_id: id, servers: [this.serverName] }) : json(404, { errcode: "M_NOT_FOUND", error: "Room alias not found" });
    }
    m = /^\/_matrix\/client\/v3\/rooms\/([^/]+)\/joined_members$/.exec(p);
    if (m) {
      this.requests.members++;
      const room = this.rooms.get(decodeURIComponent(m[1]!));
      if (!room) return json(404, { errcode: "M_NOT_FOUND", error: "unknown room" });
      return json(200, { joined: Object.fromEntries([...room.members].map((u) => [u, { display_name: u.slice(1, u.indexOf(":")), avatar_url: null }])) });
    }
    return json(404, { errcode: "M_UNRECOGNIZED", error: "Unrecognized request" });
  }

  private login(body: unknown): Response {
    this.requests.login++;
    const b = body as { type?: string; identifier?: { user?: string }; password?: string; device_id?: string };
    const user = b.identifier?.user ?? "";
    if (b.type !== "m.login.password" || this.passwords.get(user) !== b.password) return json(403, { errcode: "M_FORBIDDEN", error: "Invalid username or password" });
    const token = `tok_${crypto.randomUUID()}`;
    this.tokens.set(token, user);
    return json(200, { user_id: user, access_token: token, device_id: b.device_id ?? "DEV" });
  }

  private async sync(user: string, q: URLSearchParams): Promise<Response> {
    this.requests.sync++;
    this.syncQueries.push(q);
    const failure = this.syncFailures.shift();
    if (failure) return json(failure.status, failure.body, failure.headers);
    const filterId = q.get("filter");
    const filter = filterId ? (filterId.startsWith("{") ? JSON.parse(filterId) : this.filters.get(filterId)) : {};
    if (!filter) return json(400, { errcode: "M_INVALID_PARAM", error: `unknown filter ${filterId}` });
    const since = q.get("since");
    const full = q.get("full_state") === "true" || since === null;
    let from = 0;
    if (since !== null) {
      const n = /^s(\d+)$/.exec(since);
      if (!n || Number(n[1]) > this.pos - 1) return json(400, { errcode: "M_UNKNOWN", error: "Invalid stream token" });
      from = Number(n[1]);
    }
    if (!full && this.stuck !== null) return json(200, { next_batch: this.stuck });
    const timeout = full ? 0 : Number(q.get("timeout") ?? "0");
    if (!full && timeout > 0 && this.after(from).length === 0) await this.waitForEvent(timeout);
    return json(200, this.build(user, from, full, filter as Record<string, unknown>));
  }

  private after(from: number): Entry[] {
    return this.log.slice(from); // log[i].pos === i + 1
  }

  private waitForEvent(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(done);
    });
  }

  private build(user: string, from: number, full: boolean, filter: Record<string, unknown>): Record<string, unknown> {
    const roomFilter = (filter.room ?? {}) as { rooms?: string[] };
    const wantRoom = (id: string) => roomFilter.rooms === undefined || roomFilter.rooms.includes(id);
    const joined = [...this.rooms].filter(([id, r]) => r.members.has(user) && wantRoom(id));
    const out: Record<string, unknown> = { next_batch: `s${this.pos - 1}` };
    const presenceEvents: unknown[] = [];
    const join: Record<string, Record<string, unknown>> = {};
    const leave: Record<string, unknown> = {};
    const section = (id: string) => (join[id] ??= {});
    const push = (id: string, key: "state" | "timeline" | "ephemeral", ev: unknown) => {
      const s = section(id);
      ((s[key] ??= { events: [] }) as { events: unknown[] }).events.push(ev);
    };
    const sharesRoom = (u: string) => joined.some(([, r]) => r.members.has(u));
    if (full) {
      for (const [id, r] of joined) {
        for (const u of r.members) push(id, "state", member(u, "join"));
        if (r.typing.length) push(id, "ephemeral", { type: "m.typing", content: { user_ids: r.typing } });
        if (r.receipts.length) push(id, "ephemeral", receiptEvent(r.receipts));
      }
      if (this.presenceEnabled) {
        for (const [u, pr] of this.presence) if (pr.presence !== "offline" && sharesRoom(u)) presenceEvents.push(presenceEvent(u, pr.presence, pr.lastActiveAgo));
      }
    } else {
      const typingRooms = new Set<string>();
      for (const e of this.after(from)) {
        if (e.kind === "presence") {
          if (this.presenceEnabled && sharesRoom(e.user)) presenceEvents.push(presenceEvent(e.user, e.presence, e.lastActiveAgo));
        } else if (e.kind === "member") {
          if (e.user === user && e.membership === "leave") {
            leave[e.room] = { timeline: { events: [member(e.user, "leave")] } };
            continue;
          }
          if (!wantRoom(e.room) || !this.rooms.get(e.room)!.members.has(user)) continue;
          if (this.limitedNext.has(e.room)) continue;
          push(e.room, "timeline", member(e.user, e.membership));
        } else if (e.kind === "typing") {
          if (wantRoom(e.room) && this.rooms.get(e.room)!.members.has(user)) typingRooms.add(e.room);
        } else if (wantRoom(e.room) && this.rooms.get(e.room)!.members.has(user)) {
          push(e.room, "ephemeral", receiptEvent([e]));
        }
      }
      for (const id of typingRooms) push(id, "ephemeral", { type: "m.typing", content: { user_ids: this.rooms.get(id)!.typing } });
      for (const id of this.limitedNext) {
        const s = section(id);
        s.timeline = { events: [], limited: true, prev_batch: `p${from}` };
      }
      this.limitedNext.clear();
    }
    if (presenceEvents.length) out.presence = { events: presenceEvents };
    const rooms: Record<string, unknown> = {};
    if (Object.keys(join).length) rooms.join = join;
    if (Object.keys(leave).length) rooms.leave = leave;
    if (Object.keys(rooms).length) out.rooms = rooms;
    return out;
  }
}

function member(user: string, membership: string) {
  return { type: "m.room.member", state_key: user, sender: user, content: { membership }, event_id: `$m${Math.random()}`, origin_server_ts: Date.now() };
}

function presenceEvent(user: string, presence: string, lastActiveAgo?: number) {
  return { type: "m.presence", sender: user, content: { presence, ...(lastActiveAgo !== undefined ? { last_active_ago: lastActiveAgo } : {}), currently_active: presence === "online" } };
}

function receiptEvent(list: { user: string; eventId: string; ts: number }[]) {
  const content: Record<string, { "m.read": Record<string, { ts: number }> }> = {};
  for (const r of list) ((content[r.eventId] ??= { "m.read": {} })["m.read"][r.user] = { ts: r.ts });
  return { type: "m.receipt", content };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}
