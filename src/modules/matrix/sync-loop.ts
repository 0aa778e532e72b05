/**
 * The Matrix `/sync` loop of the presence aggregator (seed 003 §2.2; the Matrix brief's "/sync",
 * "Filter" and "Errors and the loop"). Our own loop over four Client-Server endpoints, not an SDK:
 * the README ("Matrix presence") says why.
 *
 * Each round: log in if there is no token but a password; (re)upload the filter when there is none
 * or the rooms changed; resolve aliases; `GET /sync` with `set_presence=offline`, the filter id,
 * `since` and `timeout` (0 for an initial or `full_state` sync). `next_batch` is handed to
 * `onSince` *before* the response is processed. On every start the first sync is an initial one
 * (or `full_state` with a saved `since`): presence is only sent on change, so resuming with `since`
 * alone would miss everyone whose presence did not change meanwhile.
 *
 * Errors (each counted by kind):
 * - 401: the token is dropped and never used again; with a password the loop logs in once more,
 *   without one it stops in state `unauthorized` and makes no further request.
 * - 429: waits `Retry-After` (seconds or an HTTP date), else `retry_after_ms`, else 5 s.
 * - 5xx, network errors, timeouts: exponential backoff with jitter, 1 s doubling to a 60 s cap.
 * - 400 naming the filter: the filter is uploaded again; any other 400 on a sync with `since`: the
 *   token is dropped and an initial sync follows; a 400 without `since`: backoff.
 * - the same `next_batch` with nothing in it several times in a row: backoff (a known tight loop).
 * Waiting is done through `sleep`, so tests run it on fake time.
 */
import { MatrixAggregator, type AggregateChanges, type SyncResponse, type TrackedRoom } from "./aggregator.ts";

/** A city room and how its Matrix room is named (a room id, an alias to resolve, or both). */
export interface RoomMapping {
  roomId: string;
  matrixRoomId: string | null;
  alias: string | null;
}

export type ErrorKind = "unauthorized" | "rate_limited" | "bad_request" | "unknown_filter" | "server" | "network" | "timeout" | "tight_loop" | "alias";

export type LoopState = "starting" | "syncing" | "backoff" | "unauthorized" | "stopped";

/** The loop's health, for `/readyz` and `/metrics`. */
export interface LoopStatus {
  state: LoopState;
  /** Epoch ms of the last successful sync; null before the first. */
  lastSyncAt: number | null;
  /** Current wait before the next attempt, ms (0 when not backing off). */
  backoffMs: number;
  errors: Partial<Record<ErrorKind, number>>;
  syncs: number;
  /** `ok` once the homeserver sent any presence; `unknown` until then (presence may be disabled there). */
  presence: "ok" | "unknown";
  /** Matrix rooms resolved and tracked. */
  rooms: number;
  members: number;
}

/** The loop's settings (plain data: they cross the thread boundary to the sync worker). */
export interface SyncSettings {
  /** Homeserver base URL (MATRIX_HS_URL), no trailing slash needed. */
  hsUrl: string;
  /** The bot (MATRIX_USER_ID). */
  userId: string;
  accessToken: string | null;
  password: string | null;
  /** Fixed device id for password logins, so logins do not pile up devices. */
  deviceId: string;
  /** Long-poll `timeout`, ms (the HTTP timeout is this plus 30 s). */
  syncTimeoutMs: number;
  /** The saved `next_batch`, if any. */
  since: string | null;
  rooms: RoomMapping[];
}

export interface SyncLoopOptions extends SyncSettings {
  /** Waits `ms` (resolves early, without error, when `signal` aborts). */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
  now(): number;
  random(): number;
  fetch?: typeof fetch;
  /** Called with each `next_batch` before its response is processed (persist it). */
  onSince(nextBatch: string): void;
  /** Called with each response's changes, after processing. */
  onChanges(changes: AggregateChanges): void;
  /** Called when the resolved mapping changes: city room → Matrix room id. */
  onMapping?(rooms: TrackedRoom[]): void;
  /** Called when the state or presence availability changes. */
  onStatus?(status: LoopStatus): void;
  log?(level: "info" | "warn", msg: string, fields?: Record<string, unknown>): void;
}

/** Backoff bounds (the Matrix brief: 1 s → 60 s cap) and guards. */
export const BACKOFF_START_MS = 1000;
export const BACKOFF_MAX_MS = 60_000;
export const RATE_LIMIT_DEFAULT_MS = 5000;
/** Empty responses with an unchanged `next_batch` allowed in a row before backing off. */
export const TIGHT_LOOP_LIMIT = 3;

/** A non-2xx answer from the homeserver. */
export class MatrixHttpError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: string | null,
    readonly error: string | null,
    readonly retryAfterMs: number | null,
  ) {
    super(`matrix: HTTP ${status}${errcode ? ` ${errcode}` : ""}${error ? `: ${error}` : ""}`);
    this.name = "MatrixHttpError";
  }
}

class TimeoutError extends Error {}

/** Seed 003 §2.2's filter, as the Matrix brief refines it (membership for counts, no lazy loading). */
export function syncFilter(rooms: string[]): Record<string, unknown> {
  return {
    account_data: { not_types: ["*"] },
    presence: { types: ["m.presence"] },
    room: {
      rooms,
      state: { types: ["m.room.member"], lazy_load_members: false },
      timeline: { types: ["m.room.member"], limit: 50 },
      ephemeral: { types: ["m.typing", "m.receipt"] },
      account_data: { not_types: ["*"] },
    },
  };
}

export class MatrixSyncLoop {
  readonly aggregator: MatrixAggregator;
  private token: string | null;
  private since: string | null;
  private filterId: string | null = null;
  private mapping: RoomMapping[];
  private roomsDirty = true;
  private needFull = true;
  private readonly stopper = new AbortController();
  private running: Promise<void> | null = null;
  private round: AbortController | null = null;
  private backoffMs = 0;
  private failures = 0;
  private emptyStreak = 0;
  private loggedIn = false;
  private readonly st: LoopStatus = { state: "starting", lastSyncAt: null, backoffMs: 0, errors: {}, syncs: 0, presence: "unknown", rooms: 0, members: 0 };
  private readonly fetchFn: typeof fetch;
  private readonly base: string;
  /** Requests made, by endpoint, for tests and the bench. */
  readonly requests = { sync: 0, filter: 0, login: 0, alias: 0, members: 0 };

  constructor(private readonly o: SyncLoopOptions) {
    this.token = o.accessToken;
    this.since = o.since;
    this.mapping = o.rooms;
    this.aggregator = new MatrixAggregator(o.userId);
    this.fetchFn = o.fetch ?? fetch;
    this.base = o.hsUrl.replace(/\/+$/, "");
  }

  /** Starts the loop (once); resolves when it ends (after stop(), or `unauthorized` for good). */
  start(): Promise<void> {
    this.running ??= this.run();
    return this.running;
  }

  /** Stops the loop: the current request is aborted; resolves when the loop has ended. */
  async stop(): Promise<void> {
    this.stopper.abort();
    this.round?.abort();
    this.set("stopped");
    await this.running;
  }

  /** The rooms changed: the next round re-resolves aliases, re-uploads the filter and syncs `full_state`. */
  setRooms(rooms: RoomMapping[]): void {
    this.mapping = rooms;
    this.roomsDirty = true;
    this.round?.abort(); // cut the long poll short
  }

  status(): LoopStatus {
    return { ...this.st, errors: { ...this.st.errors }, backoffMs: this.backoffMs, members: this.aggregator.memberCount() };
  }

  private async run(): Promise<void> {
    const signal = this.stopper.signal;
    while (!signal.aborted) {
      try {
        if (!this.token) {
          if (!this.o.password || this.loggedIn) {
            this.set("unauthorized");
            this.o.log?.("warn", "matrix: no usable access token; the sync loop stops (set MATRIX_ACCESS_TOKEN, or MATRIX_PASSWORD to log in)");
            return;
          }
          await this.login();
        }
        if (this.roomsDirty) await this.resolveRooms();
        this.filterId ??= await this.uploadFilter();
        await this.syncOnce();
      } catch (err) {
        if (signal.aborted) break;
        if ((err as Error)?.name === "AbortError") continue; // the rooms changed mid-poll
        await this.handle(err);
      }
    }
    this.set("stopped");
  }

  private async syncOnce(): Promise<void> {
    const initial = this.since === null;
    const full = initial || this.needFull;
    const q = new URLSearchParams({ filter: this.filterId!, set_presence: "offline", timeout: String(full ? 0 : this.o.syncTimeoutMs) });
    if (this.since) q.set("since", this.since);
    if (this.since && this.needFull) q.set("full_state", "true");
    this.requests.sync++;
    let res: SyncResponse;
    try {
      res = (await this.call("GET", `/_matrix/client/v3/sync?${q}`, undefined, this.o.syncTimeoutMs + 30_000)) as SyncResponse;
    } catch (err) {
      if (err instanceof MatrixHttpError && err.status === 400) {
        if (/filter/i.test(`${err.error ?? ""}`)) {
          this.count("unknown_filter");
          this.filterId = null;
          return;
        }
        if (this.since) {
          this.count("bad_request");
          this.o.log?.("warn", "matrix: the homeserver refused our since token; starting over with an initial sync", { error: err.message });
          this.since = null;
          this.needFull = true;
          return;
        }
      }
      throw err;
    }
    if (typeof res?.next_batch !== "string" || res.next_batch === "") throw new MatrixHttpError(502, null, "sync response without next_batch", null);
    const unchanged = res.next_batch === this.since;
    // Saved before processing: one bad event must not make us fetch the same response forever.
    this.since = res.next_batch;
    this.o.onSince(res.next_batch);
    const changes = this.aggregator.apply(res, full, this.o.now());
    if (full) changes.typing = this.aggregator.typingByRoom();
    this.needFull = false;
    for (const m of changes.leftRooms) this.o.log?.("warn", "matrix: the bot is no longer joined to a tracked room", { matrix_room_id: m });
    for (const m of changes.limitedRooms) await this.reseed(m, changes);
    this.o.onChanges(changes);
    this.st.syncs++;
    this.st.lastSyncAt = this.o.now();
    this.failures = 0;
    this.backoffMs = 0;
    this.loggedIn = false; // a later 401 may log in again: this token worked
    const presence = this.aggregator.presenceSeen ? "ok" : "unknown";
    if (presence !== this.st.presence) {
      this.st.presence = presence;
      this.o.onStatus?.(this.status());
    }
    this.set("syncing");
    const empty = !res.presence?.events?.length && !Object.keys(res.rooms?.join ?? {}).length && !Object.keys(res.rooms?.leave ?? {}).length;
    this.emptyStreak = unchanged && empty && !full ? this.emptyStreak + 1 : 0;
    if (this.emptyStreak >= TIGHT_LOOP_LIMIT) {
      this.count("tight_loop");
      await this.backoff();
    }
  }

  /** Re-reads a room's members after a `limited` timeline (the gap may hide joins and leaves). */
  private async reseed(matrixRoomId: string, changes: AggregateChanges): Promise<void> {
    this.requests.members++;
    const body = (await this.call("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(matrixRoomId)}/joined_members`)) as { joined?: Record<string, unknown> };
    const seeded = this.aggregator.seedMembers(matrixRoomId, Object.keys(body?.joined ?? {}));
    changes.online.push(...seeded.online);
    changes.offline.push(...seeded.offline);
  }

  private async login(): Promise<void> {
    this.requests.login++;
    this.loggedIn = true;
    const body = (await this.call("POST", "/_matrix/client/v3/login", {
      type: "m.login.password", identifier: { type: "m.id.user", user: this.o.userId }, password: this.o.password, device_id: this.o.deviceId,
      initial_device_display_name: "daarion-city presence aggregator",
    }, 30_000, false)) as { access_token?: string };
    if (typeof body?.access_token !== "string") throw new MatrixHttpError(502, null, "login response without access_token", null);
    this.token = body.access_token;
    this.o.log?.("info", "matrix: logged in", { user_id: this.o.userId, device_id: this.o.deviceId });
  }

  private async uploadFilter(): Promise<string> {
    this.requests.filter++;
    const body = (await this.call("POST", `/_matrix/client/v3/user/${encodeURIComponent(this.o.userId)}/filter`, syncFilter(this.aggregator.trackedMatrixRooms()))) as {
      filter_id?: string;
    };
    if (typeof body?.filter_id !== "string") throw new MatrixHttpError(502, null, "filter response without filter_id", null);
    this.needFull = true;
    return body.filter_id;
  }

  /** Resolves aliases to room ids (a room with neither, or an alias the directory does not know, is not tracked). */
  private async resolveRooms(): Promise<void> {
    this.roomsDirty = false;
    const tracked: TrackedRoom[] = [];
    const seen = new Set<string>();
    for (const r of this.mapping) {
      let id = r.matrixRoomId;
      if (!id && r.alias) {
        this.requests.alias++;
        try {
          const body = (await this.call("GET", `/_matrix/client/v3/directory/room/${encodeURIComponent(r.alias)}`)) as { room_id?: string };
          id = typeof body?.room_id === "string" ? body.room_id : null;
        } catch (err) {
          if (!(err instanceof MatrixHttpError) || err.status !== 404) throw err;
          this.count("alias");
          this.o.log?.("warn", "matrix: alias not found; the room is not tracked", { alias: r.alias, room_id: r.roomId });
        }
      }
      if (id && !seen.has(id)) {
        seen.add(id);
        tracked.push({ roomId: r.roomId, matrixRoomId: id });
      }
    }
    this.aggregator.setRooms(tracked);
    this.st.rooms = tracked.length;
    this.filterId = null;
    this.needFull = true;
    this.o.onMapping?.(tracked);
  }

  private async handle(err: unknown): Promise<void> {
    if (err instanceof MatrixHttpError) {
      if (err.status === 401) {
        this.count("unauthorized");
        this.o.log?.("warn", "matrix: the access token was refused (401); it is not used again", { errcode: err.errcode });
        this.token = null;
        return;
      }
      if (err.status === 403 && this.loggedIn && !this.token) {
        this.count("unauthorized");
        return;
      }
      if (err.status === 429) {
        this.count("rate_limited");
        return this.wait(err.retryAfterMs ?? RATE_LIMIT_DEFAULT_MS);
      }
      this.count(err.status >= 500 ? "server" : "bad_request");
    } else {
      this.count(err instanceof TimeoutError ? "timeout" : "network");
    }
    this.o.log?.("warn", "matrix: sync failed; backing off", { err: (err as Error)?.message ?? String(err), attempt: this.failures + 1 });
    await this.backoff();
  }

  /** Exponential backoff with jitter: 1 s, 2 s, 4 s … capped at 60 s, each × [0.5, 1). */
  private backoff(): Promise<void> {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** this.failures);
    this.failures++;
    return this.wait(Math.round(base * (0.5 + this.o.random() / 2)));
  }

  private async wait(ms: number): Promise<void> {
    this.backoffMs = ms;
    this.set("backoff");
    await this.o.sleep(ms, this.stopper.signal);
    this.backoffMs = 0;
  }

  private count(kind: ErrorKind): void {
    this.st.errors[kind] = (this.st.errors[kind] ?? 0) + 1;
  }

  private set(state: LoopState): void {
    if (this.st.state === state || this.st.state === "stopped") return;
    this.st.state = state;
    this.o.onStatus?.(this.status());
  }

  /**
   * One request. The access token goes in the Authorization header.
   * @throws MatrixHttpError for a non-2xx answer; TimeoutError; a network error; AbortError when stopped or the rooms changed
   */
  private async call(method: string, path: string, body?: unknown, timeoutMs = 30_000, auth = true): Promise<unknown> {
    const round = new AbortController();
    this.round = round;
    const onStop = () => round.abort();
    this.stopper.signal.addEventListener("abort", onStop);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      round.abort();
    }, timeoutMs);
    try {
      const headers: Record<string, string> = { accept: "application/json" };
      if (auth && this.token) headers.authorization = `Bearer ${this.token}`;
      if (body !== undefined) headers["content-type"] = "application/json";
      let res: Response;
      try {
        res = await this.fetchFn(`${this.base}${path}`, {
          method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: round.signal,
        });
      } catch (err) {
        if (timedOut) throw new TimeoutError(`matrix: ${method} ${path.split("?")[0]} timed out after ${timeoutMs} ms`);
        throw err;
      }
      const text = await res.text();
      let json: unknown = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch {
        if (res.ok) throw new MatrixHttpError(502, null, "response is not JSON", null);
      }
      if (!res.ok) {
        const e = (json ?? {}) as { errcode?: unknown; error?: unknown; retry_after_ms?: unknown };
        throw new MatrixHttpError(
          res.status, typeof e.errcode === "string" ? e.errcode : null, typeof e.error === "string" ? e.error : null,
          res.status === 429 ? retryAfter(res.headers.get("retry-after"), e.retry_after_ms, this.o.now()) : null,
        );
      }
      return json;
    } finally {
      clearTimeout(timer);
      this.stopper.signal.removeEventListener("abort", onStop);
      if (this.round === round) this.round = null;
    }
  }
}

/** A 429's wait: `Retry-After` (seconds or an HTTP date), then `retry_after_ms`, else null. */
export function retryAfter(header: string | null, retryAfterMs: unknown, now: number): number | null {
  if (header) {
    const s = Number(header);
    if (Number.isFinite(s) && s >= 0) return Math.round(s * 1000);
    const at = Date.parse(header);
    if (!Number.isNaN(at)) return Math.max(0, at - now);
  }
  if (typeof retryAfterMs === "number" && retryAfterMs >= 0) return retryAfterMs;
  return null;
}
