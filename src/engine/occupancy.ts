/**
 * LocalOccupancy: which users hold an open socket in which room, on this instance. It answers
 * `members_online` (count of distinct users with an open room socket) until the presence manager
 * takes over across instances.
 */
export class LocalOccupancy {
  private readonly rooms = new Map<string, Map<string, number>>();

  /**
   * Counts one more socket of `userId` in `roomId`.
   * @returns true when it is the user's first socket in the room (they just joined)
   */
  add(roomId: string, userId: string): boolean {
    let users = this.rooms.get(roomId);
    if (!users) this.rooms.set(roomId, (users = new Map()));
    const n = users.get(userId) ?? 0;
    users.set(userId, n + 1);
    return n === 0;
  }

  /**
   * Counts one socket fewer.
   * @returns true when it was the user's last socket in the room (they just left)
   */
  remove(roomId: string, userId: string): boolean {
    const users = this.rooms.get(roomId);
    const n = users?.get(userId);
    if (!users || n === undefined) return false;
    if (n > 1) {
      users.set(userId, n - 1);
      return false;
    }
    users.delete(userId);
    if (users.size === 0) this.rooms.delete(roomId);
    return true;
  }

  /** Distinct users with at least one socket in `roomId`. */
  count(roomId: string): number {
    return this.rooms.get(roomId)?.size ?? 0;
  }
}
