/**
 * RedisPresenceManager: presence shared by every instance on one Redis (node-redis).
 *
 * Keys (`REDIS_KEY_PREFIX` in front of each):
 * - `presence:user:{user_id}` = "online", EX = PRESENCE_TTL_SECONDS: seed 000's key, exactly.
 * - under `presence:{city}:` (one hash tag, so every script touches one slot and Redis Cluster
 *   can run them; the scripts are passed every key they touch):
 *   `online` zset user → presence expiry (ms) · `holds` zset "room|user|instance" → hold expiry ·
 *   `hc` hash "room|user" → instances holding · `ur` zset (score 0, by lex) "user|room" and `ru`
 *   "room|user" (who holds what, both ways) ·
 *   `hu` hash room → users holding · `on` hash room → online users holding ·
 *   `typing` zset "room|user" → typing expiry · `tl` zset (score 0) "room|user" · `tc` hash room →
 *   typers · `ver` hash room → version (never reset, so numbers can always be ordered).
 *
 * A flush is one script call (EVALSHA; the text is sent once per connection) plus the seed keys'
 * SETs, written in the same tick: one round trip. The scripts keep the per-room counts exact as
 * they go (O(changes)); a sweep removes what expired in O(expiries). Each change is returned only
 * to the caller that made it, so every instance reports it exactly once between them.
 * Commands fail fast while Redis is down (no offline queue); the tracker keeps the batch.
 */
import { createClient, defineScript } from "../../redis-client.ts";
import type { Logger } from "../../log.ts";
import type { Membership, PresenceBatch, PresenceChanges, PresenceManager, RoomCounts, Transition } from "./presence.ts";

export interface RedisPresenceOptions {
  url: string;
  keyPrefix: string;
  /** Presence and hold lifetime after a write, ms. */
  ttlMs: number;
  typingTtlMs: number;
  log: Logger;
}

/** The shared part of both write scripts: key names, helpers that keep the counts exact. */
const COMMON = `
local online, holds, hc, ur, hu, on, typing, tl, tc, ver, ru_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local changed, changedList = {}, {}
local transitions, joins, leaves = {}, {}, {}
local function touch(r)
  if not changed[r] then changed[r] = true; table.insert(changedList, r) end
end
local function roomsOf(u)
  local out = {}
  local p = u .. '|'
  for _, m in ipairs(redis.call('ZRANGEBYLEX', ur, '[' .. p, '[' .. p .. '\\255')) do table.insert(out, string.sub(m, #p + 1)) end
  return out
end
local function addOnline(rooms, delta)
  for _, r in ipairs(rooms) do
    local n = redis.call('HINCRBY', on, r, delta)
    if n <= 0 then redis.call('HDEL', on, r) end
    touch(r)
  end
end
local function transition(u, rooms)
  table.insert(transitions, u); table.insert(transitions, #rooms)
  for _, r in ipairs(rooms) do table.insert(transitions, r) end
end
local function dropHold(r, u)
  local ru = r .. '|' .. u
  if redis.call('HINCRBY', hc, ru, -1) > 0 then return end
  redis.call('HDEL', hc, ru)
  redis.call('ZREM', ur, u .. '|' .. r)
  redis.call('ZREM', ru_key, ru)
  local h = redis.call('HINCRBY', hu, r, -1)
  if h <= 0 then redis.call('HDEL', hu, r); h = 0 end
  if redis.call('ZSCORE', online, u) then addOnline({r}, -1) else touch(r) end
  table.insert(leaves, r); table.insert(leaves, u); table.insert(leaves, h)
end
-- A room's numbers as the caller decodes them: room, online, holders, version, typers (newline-joined).
local function numbers(out, r, v)
  local p = r .. '|'
  local typers = {}
  for _, m in ipairs(redis.call('ZRANGEBYLEX', tl, '[' .. p, '[' .. p .. '\\255')) do table.insert(typers, string.sub(m, #p + 1)) end
  table.insert(out, r)
  table.insert(out, tonumber(redis.call('HGET', on, r) or '0'))
  table.insert(out, tonumber(redis.call('HGET', hu, r) or '0'))
  table.insert(out, v)
  table.insert(out, table.concat(typers, '\\n'))
end
local function counts()
  local out = {}
  for _, r in ipairs(changedList) do numbers(out, r, redis.call('HINCRBY', ver, r, 1)) end
  return out
end
`;

/**
 * ARGV: now, presence-until, typing-until, instance, #heartbeats, #holds, #releases, #typing,
 * #typing stops, then the heartbeats' users and (room, user) pairs of holds, releases, typing and
 * typing stops.
 */
const APPLY = `${COMMON}
local untilMs, typingUntil, inst = ARGV[2], ARGV[3], ARGV[4]
local nH, nHo, nR, nT, nS = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local i = 10
for _ = 1, nH do
  local u = ARGV[i]; i = i + 1
  if redis.call('ZADD', online, untilMs, u) == 1 then
    local rooms = roomsOf(u)
    addOnline(rooms, 1)
    transition(u, rooms)
  end
end
for _ = 1, nHo do
  local r, u = ARGV[i], ARGV[i + 1]; i = i + 2
  local ru = r .. '|' .. u
  if redis.call('ZADD', holds, untilMs, ru .. '|' .. inst) == 1 and redis.call('HINCRBY', hc, ru, 1) == 1 then
    redis.call('ZADD', ur, 0, u .. '|' .. r)
    redis.call('ZADD', ru_key, 0, ru)
    local h = redis.call('HINCRBY', hu, r, 1)
    if redis.call('ZSCORE', online, u) then addOnline({r}, 1) else touch(r) end
    table.insert(joins, r); table.insert(joins, u); table.insert(joins, h)
  end
end
for _ = 1, nR do
  local r, u = ARGV[i], ARGV[i + 1]; i = i + 2
  if redis.call('ZREM', holds, r .. '|' .. u .. '|' .. inst) == 1 then dropHold(r, u) end
end
for _ = 1, nT do
  local r, u = ARGV[i], ARGV[i + 1]; i = i + 2
  local m = r .. '|' .. u
  if redis.call('ZADD', typing, typingUntil, m) == 1 then
    redis.call('ZADD', tl, 0, m)
    redis.call('HINCRBY', tc, r, 1)
    touch(r)
  end
end
for _ = 1, nS do
  local r, u = ARGV[i], ARGV[i + 1]; i = i + 2
  local m = r .. '|' .. u
  if redis.call('ZREM', typing, m) == 1 then
    redis.call('ZREM', tl, m)
    if redis.call('HINCRBY', tc, r, -1) <= 0 then redis.call('HDEL', tc, r) end
    touch(r)
  end
end
return {transitions, joins, leaves, counts(), 0}
`;

/** ARGV: now, limit. Users first, then holds, then typing; each expiry returned to one caller only. */
const EXPIRE = `${COMMON}
local now, limit = ARGV[1], tonumber(ARGV[2])
local more = 0
local users = redis.call('ZRANGEBYSCORE', online, '-inf', now, 'LIMIT', 0, limit)
if #users == limit then more = 1 end
for _, u in ipairs(users) do
  redis.call('ZREM', online, u)
  local rooms = roomsOf(u)
  addOnline(rooms, -1)
  transition(u, rooms)
end
local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, limit)
if #expired == limit then more = 1 end
for _, m in ipairs(expired) do
  redis.call('ZREM', holds, m)
  local r, u = string.match(m, '^([^|]*)|([^|]*)|')
  if r then dropHold(r, u) end
end
local typed = redis.call('ZRANGEBYSCORE', typing, '-inf', now, 'LIMIT', 0, limit)
if #typed == limit then more = 1 end
for _, m in ipairs(typed) do
  redis.call('ZREM', typing, m)
  redis.call('ZREM', tl, m)
  local r = string.match(m, '^([^|]*)|')
  if redis.call('HINCRBY', tc, r, -1) <= 0 then redis.call('HDEL', tc, r) end
  touch(r)
end
return {transitions, joins, leaves, counts(), more}
`;

/** Every room with holders or typers: room, online, holders, version, typers (a resync, O(rooms)). */
const ALL_COUNTS = `${COMMON}
local seen = {}
for _, h in ipairs({hu, tc}) do
  local flat = redis.call('HGETALL', h)
  for j = 1, #flat, 2 do
    local r = flat[j]
    if not seen[r] then seen[r] = true; table.insert(changedList, r) end
  end
end
local out = {}
for _, r in ipairs(changedList) do numbers(out, r, tonumber(redis.call('HGET', ver, r) or '0')) end
return out
`;

const KEY_NAMES = ["online", "holds", "hc", "ur", "hu", "on", "typing", "tl", "tc", "ver", "ru"] as const;

const script = (SCRIPT: string, readOnly = false) =>
  defineScript({
    SCRIPT,
    NUMBER_OF_KEYS: KEY_NAMES.length,
    IS_READ_ONLY: readOnly,
    parseCommand(parser: { pushKeys(k: string[]): void; push(...a: string[]): void }, keys: string[], args: string[]) {
      parser.pushKeys(keys);
      parser.push(...args);
    },
    transformReply: (reply: unknown) => reply,
  } as never);

const SCRIPTS = { presenceApply: script(APPLY), presenceExpire: script(EXPIRE), presenceCounts: script(ALL_COUNTS, true) };

type Reply = [unknown[], unknown[], unknown[], unknown[], number];
type Client = ReturnType<typeof createClient<Record<string, never>, Record<string, never>, typeof SCRIPTS>>;
type ScriptFn = (keys: string[], args: string[]) => Promise<unknown>;

export class RedisPresenceManager implements PresenceManager {
  readonly engine = "redis" as const;
  private readonly client: Client;
  private readonly keys: string[];
  private readonly base: string;
  private lastErrorLog = 0;

  constructor(private readonly o: RedisPresenceOptions) {
    this.base = `${o.keyPrefix}presence:{city}:`;
    this.keys = KEY_NAMES.map((k) => this.base + k);
    this.client = createClient({
      url: o.url,
      disableOfflineQueue: true,
      scripts: SCRIPTS,
      socket: { connectTimeout: 3000, reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 1000) },
    }) as unknown as Client;
    this.client.on("error", (err: Error) => {
      // node-redis reports every failed reconnect; one line per 10 s is enough.
      if (Date.now() - this.lastErrorLog > 10_000) {
        this.lastErrorLog = Date.now();
        o.log.warn("presence: redis error", { err });
      }
    });
  }

  /** Starts connecting and waits up to 3 s for it; presence works degraded until Redis answers. */
  async start(): Promise<void> {
    const connecting = this.client.connect().catch(() => {});
    await Promise.race([connecting, Bun.sleep(3000)]);
  }

  async close(): Promise<void> {
    if (!this.client.isOpen) return;
    try {
      if (this.client.isReady) await this.client.close();
      else this.client.destroy();
    } catch {
      this.client.destroy();
    }
  }

  state(): "up" | "down" {
    return this.client.isReady ? "up" : "down";
  }

  /** The seed's key for a user (`presence:user:{user_id}`), with the key prefix. */
  userKey(userId: string): string {
    return `${this.o.keyPrefix}presence:user:${userId}`;
  }

  async apply(batch: PresenceBatch, now: number): Promise<PresenceChanges> {
    const args = [
      String(now), String(now + this.o.ttlMs), String(now + this.o.typingTtlMs), batch.instance,
      String(batch.heartbeats.length), String(batch.holds.length), String(batch.releases.length), String(batch.typing.length),
      String(batch.typingStops?.length ?? 0),
      ...batch.heartbeats,
    ];
    for (const list of [batch.holds, batch.releases, batch.typing, batch.typingStops ?? []]) for (const { roomId, userId } of list) args.push(roomId, userId);
    // The seed keys live outside the hash tag; written in the same tick, they share the round trip.
    let seedKeys: Promise<unknown> = Promise.resolve();
    if (batch.heartbeats.length) {
      const m = this.client.multi();
      const ex = Math.max(1, Math.ceil(this.o.ttlMs / 1000));
      for (const u of batch.heartbeats) m.set(this.userKey(u), "online", { EX: ex });
      seedKeys = m.execAsPipeline();
    }
    const [reply] = await Promise.all([(this.client.presenceApply as unknown as ScriptFn)(this.keys, args), seedKeys]);
    return decode(reply as Reply);
  }

  async expire(now: number, limit: number): Promise<PresenceChanges & { more: boolean }> {
    const reply = (await (this.client.presenceExpire as unknown as ScriptFn)(this.keys, [String(now), String(limit)])) as Reply;
    return { ...decode(reply), more: Number(reply[4]) === 1 };
  }

  async counts(): Promise<Map<string, RoomCounts>> {
    const flat = (await (this.client.presenceCounts as unknown as ScriptFn)(this.keys, [])) as unknown[];
    return decodeCounts(flat);
  }

  async isOnline(userId: string, now: number): Promise<boolean> {
    const score = await this.client.zScore(this.keys[0]!, userId);
    return score !== null && score > now;
  }

  async onlineUsers(now: number): Promise<string[]> {
    return (await this.client.zRangeByScore(this.keys[0]!, `(${now}`, "+inf")).sort();
  }

  async onlineCount(now: number): Promise<number> {
    return this.client.zCount(this.keys[0]!, `(${now}`, "+inf");
  }

  async roomMembers(roomId: string, now: number): Promise<string[]> {
    const p = `${roomId}|`;
    const users = (await this.client.zRangeByLex(this.keys[10]!, `[${p}`, `[${p}\xff`)).map((m) => m.slice(p.length));
    if (users.length === 0) return [];
    const scores = await this.client.zmScore(this.keys[0]!, users);
    return users.filter((_, i) => (scores[i] ?? 0) > now).sort();
  }
}

function decode(reply: Reply): PresenceChanges {
  const [t, j, l, c] = reply;
  const transitions: Transition[] = [];
  for (let i = 0; i < t.length; ) {
    const userId = String(t[i]);
    const n = Number(t[i + 1]);
    transitions.push({ userId, rooms: t.slice(i + 2, i + 2 + n).map(String).sort() });
    i += 2 + n;
  }
  const memberships = (flat: unknown[]): Membership[] => {
    const out: Membership[] = [];
    for (let i = 0; i < flat.length; i += 3) out.push({ roomId: String(flat[i]), userId: String(flat[i + 1]), holders: Number(flat[i + 2]) });
    return out;
  };
  return { transitions, joins: memberships(j), leaves: memberships(l), counts: decodeCounts(c) };
}

/** room, online, holders, version, typers ("\n"-joined) → counts. */
function decodeCounts(flat: unknown[]): Map<string, RoomCounts> {
  const out = new Map<string, RoomCounts>();
  for (let i = 0; i < flat.length; i += 5) {
    const typers = String(flat[i + 4] ?? "");
    const typingUsers = typers === "" ? [] : typers.split("\n").sort();
    out.set(String(flat[i]), { online: Number(flat[i + 1]), holders: Number(flat[i + 2]), version: Number(flat[i + 3]), typing: typingUsers.length, typingUsers });
  }
  return out;
}
