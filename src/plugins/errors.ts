/**
 * Error plugin: maps every failure to SPEC's `{ "error": { "code", "message" } }` with the status
 * of the error catalog (`src/engine/errors.ts`). Elysia's own validation and parse errors become
 * `validation_failed` / `invalid_json` (400); unknown routes `route_not_found` (404); anything
 * unexpected is logged and answered `internal` (500) without details.
 */
import { Elysia, ValidationError } from "elysia";
import { AppError } from "../engine/errors.ts";
import type { Logger } from "../log.ts";

/** The JSON error body of SPEC "HTTP API". */
export function errorBody(code: string, message: string): { error: { code: string; message: string } } {
  return { error: { code, message } };
}

/** A JSON error `Response` outside Elysia (upgrade refusals, body-size checks). */
export function errorResponse(err: AppError): Response {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (err.retryAfterSeconds !== undefined) headers["retry-after"] = String(err.retryAfterSeconds);
  return new Response(JSON.stringify(errorBody(err.code, err.message)), { status: err.status, headers });
}

function describeValidation(err: ValidationError): string {
  const first = err.all[0] as { path?: string; message?: string; summary?: string } | undefined;
  const where = err.type === "body" ? "body" : err.type;
  if (!first) return `invalid ${where}`;
  const field = first.path ? `${where}${first.path.replace(/\//g, ".")}` : where;
  const what = first.message === "Unexpected property" ? "is not a known field" : (first.summary ?? first.message ?? "is invalid");
  return `${field}: ${what}`;
}

/**
 * @param log where unexpected errors are written
 * @example app.use(errorPlugin(log))
 */
export function errorPlugin(log: Logger) {
  return new Elysia({ name: "errors" }).onError({ as: "global" }, ({ code, error, set }) => {
    set.headers["content-type"] = "application/json";
    if (error instanceof AppError) {
      set.status = error.status;
      if (error.retryAfterSeconds !== undefined) set.headers["retry-after"] = String(error.retryAfterSeconds);
      return errorBody(error.code, error.message);
    }
    switch (code) {
      case "VALIDATION":
        set.status = 400;
        return errorBody("validation_failed", describeValidation(error as ValidationError));
      case "PARSE":
        set.status = 400;
        return errorBody("invalid_json", "request body is not valid JSON");
      case "NOT_FOUND":
        set.status = 404;
        return errorBody("route_not_found", "no such route");
      default:
        log.error("http: unhandled error", { code, err: error });
        set.status = 500;
        return errorBody("internal", "internal error");
    }
  });
}
