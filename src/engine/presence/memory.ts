/**
 * MemoryPresenceBackend: presence in this process, for the embedded default. Single instance only:
 * another process cannot see it. Same TTL semantics as Redis, on the manager's clock.
 */
import type { PresenceBackend, PresenceBatch, RoomCounts } from "./presence.ts";

export interface MemoryPresenceOptions {
  ttlMs: number;
  typingTtlMs: number;
}

export class MemoryPresenceBackend implements PresenceBackend {
  readonly engine = "memory" as const;
  /** user → presence expiry (ms) */
  private readonly online = new Map<string, number>();
  /** room → "user|instance" → hold expiry (ms) */
  private readonly holds = new Map<string, Map<string, number>>();
  /** room → user → typing expiry (ms) */
  private readonly typers = new Map<string, Map<string, number>>();

  constructor(private readonly o: MemoryPresenceOptions) {}

  async start(): Promise<void> {}
  async close(): Promise<void> {}
  state(): "up" {
    return "up";
  }

  async apply(batch: PresenceBatch, now: number): Promise<string[]> {
    const began: string[] = [];
    for (const u of batch.heartbeats) {
      if (!this.online.has(u)) began.push(u);
      this.online.set(u, now + this.o.ttlMs);
    }
    for (const { roomId, userId } of batch.holds) inner(this.holds, roomId).set(`${userId}|${batch.instance}`, now + this.o.ttlMs);
    for (const { roomId, userId } of batch.releases) this.holds.get(roomId)?.delete(`${userId}|${batch.instance}`);
    for (const { roomId, userId } of batch.typing) inner(this.typers, roomId).set(userId, now + this.o.typingTtlMs);
    return began;
  }

  async expire(now: number): Promise<string[]> {
    const gone: string[] = [];
    for (const [u, until] of this.online) {
      if (until <= now) {
        this.online.delete(u);
        gone.push(u);
      }
    }
    return gone;
  }

  async counts(now: number): Promise<Map<string, RoomCounts>> {
    const out = new Map<string, RoomCounts>();
    const rooms = new Set([...this.holds.keys(), ...this.typers.keys()]);
    for (const room of rooms) {
      const holders = prune(this.holds, room, now);
      const typing = prune(this.typers, room, now);
      let online = 0;
      for (const u of usersOf(holders)) if (this.isLive(u, now)) online++;
      if (holders.length === 0 && typing.length === 0) continue;
      out.set(room, { online, typing: typing.length });
    }
    return out;
  }

  async isOnline(userId: string, now: number): Promise<boolean> {
    return this.isLive(userId, now);
  }

  async onlineUsers(now: number): Promise<string[]> {
    return [...this.online].filter(([, until]) => until > now).map(([u]) => u).sort();
  }

  async onlineCount(now: number): Promise<number> {
    return (await this.onlineUsers(now)).length;
  }

  async roomMembers(roomId: string, now: number): Promise<string[]> {
    return usersOf(prune(this.holds, roomId, now)).filter((u) => this.isLive(u, now)).sort();
  }

  private isLive(userId: string, now: number): boolean {
    return (this.online.get(userId) ?? 0) > now;
  }
}

/** Distinct users of "user|instance" holds. */
function usersOf(holders: string[]): string[] {
  return [...new Set(holders.map((h) => h.slice(0, h.lastIndexOf("|"))))];
}

function inner(map: Map<string, Map<string, number>>, room: string): Map<string, number> {
  let m = map.get(room);
  if (!m) map.set(room, (m = new Map()));
  return m;
}

/** Drops expired entries of a room and returns the users left. */
function prune(map: Map<string, Map<string, number>>, room: string, now: number): string[] {
  const m = map.get(room);
  if (!m) return [];
  for (const [u, until] of m) if (until <= now) m.delete(u);
  if (m.size === 0) map.delete(room);
  return [...m.keys()];
}
