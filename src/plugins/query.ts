/**
 * Strict integers in query strings (SPEC "HTTP API": paging parameters have documented ranges; a
 * value outside is refused, never clamped). The route schemas check the range; this checks the
 * spelling first, because the schema's coercion would read `0x10`, `1e2` or ` 5` as numbers. A
 * parameter named here must be plain decimal digits (no sign, no leading zero) or the request is a
 * 400 `validation_failed`.
 */
import { Elysia } from "elysia";
import { AppError } from "../engine/errors.ts";

const DECIMAL = /^(0|[1-9][0-9]{0,15})$/;

/** @example app.use(strictQueryIntegers(["limit", "offset"])) */
export function strictQueryIntegers(names: string[]) {
  const wanted = new Set(names);
  return new Elysia({ name: "strict-query-integers" }).onRequest(({ request }) => {
    const url = request.url;
    const q = url.indexOf("?");
    if (q < 0) return;
    for (const [key, value] of new URLSearchParams(url.slice(q + 1))) {
      if (wanted.has(key) && !DECIMAL.test(value)) {
        throw new AppError("validation_failed", `query.${key} must be a whole number in decimal digits, got ${JSON.stringify(value.slice(0, 40))}`);
      }
    }
  });
}
