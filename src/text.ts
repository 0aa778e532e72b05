/**
 * Text rules (SPEC "HTTP API", Text): in every text field of every route and frame, NUL and the
 * other C0 control characters except `\n` and `\t` are refused, so both stores accept exactly the
 * same text (PostgreSQL refuses U+0000 in `text`; SQLite would store it) and no control byte
 * reaches a client's terminal or log.
 */
import { AppError } from "./engine/errors.ts";

/** A C0 control character other than tab (U+0009) and line feed (U+000A). */
const FORBIDDEN = /[\u0000-\u0008\u000B-\u001F]/;

/** The same rule as a JSON-Schema pattern, for TypeBox string schemas (OpenAPI shows it). */
export const TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000B-\\u001F]*$";

/**
 * Trims and checks a text field: a string, `min` to `max` characters (code points) after trimming,
 * no forbidden control character.
 * @param field the name shown in the error (`body`, `prompt`, `name`, …)
 * @throws AppError `validation_failed`
 */
export function checkText(value: unknown, field: string, min: number, max: number): string {
  if (typeof value !== "string") throw new AppError("validation_failed", `${field} must be a string`);
  const t = value.trim();
  const at = t.search(FORBIDDEN);
  if (at >= 0) {
    const code = t.charCodeAt(at).toString(16).padStart(4, "0").toUpperCase();
    throw new AppError("validation_failed", `${field} must not contain control characters (U+${code} at ${at}); only \\n and \\t are allowed`);
  }
  const chars = t.length <= max ? t.length : [...t].length;
  if (chars < min || chars > max) throw new AppError("validation_failed", `${field} must be ${min} to ${max} characters after trimming, got ${chars}`);
  return t;
}
