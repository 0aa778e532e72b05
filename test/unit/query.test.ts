import { describe, expect, test } from "bun:test";
import { queryOf } from "../../src/engine/sockets.ts";

// queryOf reads an upgrade's query in place; it must answer exactly what URLSearchParams does.
describe("queryOf", () => {
  const urls = [
    "http://h/ws",
    "http://h/ws?",
    "http://h/ws?token=abc",
    "http://h/ws?a=1&token=x.y.z&since=4",
    "http://h/ws?token=&token=2",
    "http://h/ws?token",
    "http://h/ws?tokenx=1&token=2",
    "http://h/ws?since=5#frag&token=9",
    "http://h/ws?token=a%2Bb",
    "http://h/ws?token=a+b",
    "http://h/ws?%74oken=q&token=r",
    "http://h/ws?token=r&%74oken=q",
    "http://h/ws?token=a=b",
    "http://h/ws?&&token=z&",
    "http://h/ws?x=%zz&token=ok",
    "http://h/ws?since=m_city_01JZ&events=counts",
  ];
  for (const url of urls) {
    test(`answers as URLSearchParams for ${url}`, () => {
      const expected = new URL(url).searchParams;
      const got = queryOf(url);
      for (const name of ["token", "since", "events", "a", "x", "missing"]) expect([name, got.get(name)]).toEqual([name, expected.get(name)]);
    });
  }
});
