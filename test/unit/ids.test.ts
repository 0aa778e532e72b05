import { describe, expect, test } from "bun:test";
import { IdGenerator, idTime, isId, roomIdForSlug, SLUG_RE } from "../../src/ids.ts";

describe("ids", () => {
  test("ids carry the seed prefixes and sort by creation, even within one millisecond or when the clock steps back", () => {
    const g = new IdGenerator();
    const t = Date.UTC(2026, 5, 1);
    const made = [g.make("message", t), g.make("message", t), g.make("message", t + 5), g.make("message", t - 1000)];
    expect(made.every((id) => isId("message", id))).toBe(true);
    expect([...made].sort()).toEqual(made);
    expect(idTime("message", made[0]!)).toBe(t);
    expect(g.make("feedEvent", t)).toMatch(/^evt_city_[0-9A-HJKMNP-TV-Z]{26}$/);
    expect(g.make("secondmeSession", t)).toMatch(/^smsess_/);
    expect(g.make("secondmeMessage", t)).toMatch(/^smmsg_/);
  });

  test("isId rejects other kinds and malformed ULIDs", () => {
    expect(isId("message", "evt_city_01JD4Q1W3YB4T6Z0R9J8K7H5G2")).toBe(false);
    expect(isId("message", "m_city_01JD4Q1W3YB4T6Z0R9J8K7H5G")).toBe(false);
    expect(isId("message", "m_city_01JD4Q1W3YB4T6Z0R9J8K7H5GU")).toBe(false); // U is not Crockford
    expect(isId("message", "m_city_01JD4Q1W3YB4T6Z0R9J8K7H5G2")).toBe(true);
  });

  test("room ids and slugs", () => {
    expect(roomIdForSlug("general")).toBe("room_city_general");
    for (const ok of ["general", "a", "lab-1", "x_y", "0".repeat(63)]) expect(SLUG_RE.test(ok)).toBe(true);
    for (const bad of ["", "-a", "_a", "A", "a.b", "a b", "0".repeat(64), "ґ"]) expect(SLUG_RE.test(bad)).toBe(false);
  });
});
