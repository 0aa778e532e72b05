/**
 * Prefixed ULID ids (SPEC "HTTP API": `m_city_`, `evt_city_`, `smsess_`, `smmsg_`).
 * ULIDs sort by creation time, so an id doubles as a paging and recovery cursor.
 */
import { decodeTime, monotonicFactory } from "ulid";

export const ID_PREFIX = {
  message: "m_city_",
  feedEvent: "evt_city_",
  secondmeSession: "smsess_",
  secondmeMessage: "smmsg_",
} as const;

export type IdKind = keyof typeof ID_PREFIX;

const ULID_BODY = "[0-9A-HJKMNP-TV-Z]{26}";
const patterns = Object.fromEntries(
  Object.entries(ID_PREFIX).map(([kind, prefix]) => [kind, new RegExp(`^${prefix}${ULID_BODY}$`)]),
) as Record<IdKind, RegExp>;

/**
 * Generates ids that increase strictly within this process, even when several are made in the
 * same millisecond or the wall clock steps back (monotonic ULID factory).
 */
export class IdGenerator {
  private readonly next = monotonicFactory();

  /** A new id of `kind` stamped at `nowMs` (or later, if the clock stepped back). */
  make(kind: IdKind, nowMs: number): string {
    return ID_PREFIX[kind] + this.next(nowMs);
  }
}

/** True when `value` is an id of `kind` (right prefix, 26-character Crockford ULID). */
export function isId(kind: IdKind, value: string): boolean {
  return patterns[kind].test(value);
}

/** Milliseconds since the epoch encoded in a prefixed id; throws on a malformed id. */
export function idTime(kind: IdKind, id: string): number {
  return decodeTime(id.slice(ID_PREFIX[kind].length));
}

/** The room id for a slug (seed 000 §4.1: `id = room_city_{slug}`). */
export function roomIdForSlug(slug: string): string {
  return `room_city_${slug}`;
}

/** Room slugs: lower-case letters, digits, `_` and `-`, 1 to 63 characters (SPEC "HTTP API"). */
export const SLUG_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$";
export const SLUG_RE = new RegExp(SLUG_PATTERN);
/** Room ids as made by {@link roomIdForSlug}. */
export const ROOM_ID_RE = /^room_city_[a-z0-9][a-z0-9_-]{0,62}$/;

/** A city user id (a token's `sub`): `u_` and 1 to 120 of `[A-Za-z0-9._-]`. */
export const USER_ID_RE = /^u_[A-Za-z0-9._-]{1,120}$/;
