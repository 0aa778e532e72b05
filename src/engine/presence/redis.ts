/**
 * RedisPresenceBackend: presence shared by every instance on one Redis (node-redis).
 *
 * Keys (`REDIS_KEY_PREFIX` in front of each):
 * - `presence:user:{user_id}` = "online", EX = PRESENCE_TTL_SECONDS: seed 000's key, exactly.
 * - `presence:{city}:online`: zset user → presence expiry (ms); the source of transitions.
 * - `presence:{city}:room:{room_id}`: zset "user|instance" → hold expiry (ms); an instance
 *   refreshes its holds before they expire, so a crashed instance's holds lapse by themselves.
 * - `presence:{city}:typing:{room_id}`: zset user → typing expiry (ms).
 * - `presence:{city}:rooms`: set of rooms with holds or typing.
 * All but the seed key share the hash tag `{city}`, so the scripts below touch a single slot.
 *
 * A flush is one pipeline (`multi().execAsPipeline()`); `ZADD` answering 1 means the user's
 * entry is new (an online transition), and only one instance's `ZADD` can create it. Expiry is a
 * script that removes what it returns, so only one instance reports each offline transition.
 * Commands fail fast while Redis is down (no offline queue); the manager keeps the batch.
 */
import { createClient } from "redis";
import type { Logger } from "../../log.ts";
import type { PresenceBackend, PresenceBatch, RoomCounts } from "./presence.ts";

export interface RedisPresenceOptions {
  url: string;
  keyPrefix: string;
  ttlMs: number;
  typingTtlMs: number;
  log: Logger;
}

/** Removes and returns users whose presence expired (atomically: one caller gets each). */
const EXPIRE_SCRIPT = `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids`;

/**
 * Per room: distinct online users among live holds, and live typers. Drops expired holds and
 * typing, and forgets rooms with neither. Returns a flat list room, online, typing, ….
 */
const COUNTS_SCRIPT = `
local now = tonumber(ARGV[1])
local base = ARGV[2]
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local hk = base .. 'room:' .. room
  local tk = base .. 'typing:' .. room
  redis.call('ZREMRANGEBYSCORE', hk, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', tk, '-inf', now)
  local holders = redis.call('ZRANGE', hk, 0, -1)
  local seen = {}
  local online = 0
  for _, h in ipairs(holders) do
    local uid = string.match(h, '^(.*)|[^|]*$')
    if uid and not seen[uid] then
      seen[uid] = true
      local s = redis.call('ZSCORE', KEYS[2], uid)
      if s and tonumber(s) > now then online = online + 1 end
    end
  end
  local typing = redis.call('ZCARD', tk)
  if #holders == 0 and typing == 0 then
    redis.call('SREM', KEYS[1], room)
  else
    table.insert(out, room)
    table.insert(out, online)
    table.insert(out, typing)
  end
end
return out`;

type Client = ReturnType<typeof createClient>;

export class RedisPresenceBackend implements PresenceBackend {
  readonly engine = "redis" as const;
  private readonly client: Client;
  private readonly base: string;
  private readonly onlineKey: string;
  private readonly roomsKey: string;
  private lastErrorLog = 0;

  constructor(private readonly o: RedisPresenceOptions) {
    this.base = `${o.keyPrefix}presence:{city}:`;
    this.onlineKey = `${this.base}online`;
    this.roomsKey = `${this.base}rooms`;
    this.client = createClient({
      url: o.url,
      disableOfflineQueue: true,
      socket: { connectTimeout: 3000, reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 1000) },
    });
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

  async apply(batch: PresenceBatch, now: number): Promise<string[]> {
    const m = this.client.multi();
    const ttlSeconds = Math.max(1, Math.ceil(this.o.ttlMs / 1000));
    const until = now + this.o.ttlMs;
    for (const u of batch.heartbeats) {
      m.set(this.userKey(u), "online", { EX: ttlSeconds });
      m.zAdd(this.onlineKey, { score: until, value: u });
    }
    for (const { roomId, userId } of batch.holds) {
      m.zAdd(`${this.base}room:${roomId}`, { score: until, value: `${userId}|${batch.instance}` });
      m.sAdd(this.roomsKey, roomId);
    }
    for (const { roomId, userId } of batch.releases) m.zRem(`${this.base}room:${roomId}`, `${userId}|${batch.instance}`);
    for (const { roomId, userId } of batch.typing) {
      m.zAdd(`${this.base}typing:${roomId}`, { score: now + this.o.typingTtlMs, value: userId });
      m.sAdd(this.roomsKey, roomId);
    }
    const replies = (await m.execAsPipeline()) as unknown[];
    const began: string[] = [];
    batch.heartbeats.forEach((u, i) => {
      if (replies[i * 2 + 1] === 1) began.push(u);
    });
    return began;
  }

  async expire(now: number): Promise<string[]> {
    const gone: string[] = [];
    for (;;) {
      const ids = (await this.client.eval(EXPIRE_SCRIPT, { keys: [this.onlineKey], arguments: [String(now)] })) as string[];
      gone.push(...ids);
      if (ids.length < 1000) return gone;
    }
  }

  async counts(now: number): Promise<Map<string, RoomCounts>> {
    const flat = (await this.client.eval(COUNTS_SCRIPT, { keys: [this.roomsKey, this.onlineKey], arguments: [String(now), this.base] })) as (string | number)[];
    const out = new Map<string, RoomCounts>();
    for (let i = 0; i < flat.length; i += 3) out.set(String(flat[i]), { online: Number(flat[i + 1]), typing: Number(flat[i + 2]) });
    return out;
  }

  async isOnline(userId: string, now: number): Promise<boolean> {
    const score = await this.client.zScore(this.onlineKey, userId);
    return score !== null && score > now;
  }

  async onlineUsers(now: number): Promise<string[]> {
    return (await this.client.zRangeByScore(this.onlineKey, `(${now}`, "+inf")).sort();
  }

  async onlineCount(now: number): Promise<number> {
    return this.client.zCount(this.onlineKey, `(${now}`, "+inf");
  }

  async roomMembers(roomId: string, now: number): Promise<string[]> {
    const holders = await this.client.zRangeByScore(`${this.base}room:${roomId}`, `(${now}`, "+inf");
    const users = [...new Set(holders.map((h) => h.slice(0, h.lastIndexOf("|"))))];
    if (users.length === 0) return [];
    const scores = await this.client.zmScore(this.onlineKey, users);
    return users.filter((_, i) => (scores[i] ?? 0) > now).sort();
  }
}
