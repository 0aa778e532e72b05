/**
 * The one catalog of stable error codes (ARCHITECTURE habit 7). Services throw {@link AppError};
 * the HTTP error plugin maps it to `{ error: { code, message } }` with the status below, and the
 * socket handlers map it to a WS `{event:"error", code, message}` frame. README "Error codes" lists
 * the same table for clients.
 */
export const ERROR_STATUS = {
  /** The request body is not valid JSON. */
  invalid_json: 400,
  /** A body, query or path value breaks its schema (unknown field, wrong type, out of range). */
  validation_failed: 400,
  /** A `before`/`since` cursor that is not an id of the expected kind. */
  invalid_cursor: 400,
  /** No token, or a token that is malformed, forged, expired or for the wrong issuer/audience. */
  unauthorized: 401,
  /** No such room. */
  room_not_found: 404,
  /** No such route. */
  route_not_found: 404,
  /** No such entity on the living map. */
  entity_not_found: 404,
  /** `POST /city/rooms` with a slug that another room already has. */
  slug_taken: 409,
  /** A `matrix_room_id` that another room already maps to (one Matrix room feeds one city room). */
  matrix_room_taken: 409,
  /** Only an admin (CITY_ADMIN_USERS, or a token with `role: "admin"`) may do this. */
  forbidden: 403,
  /** The request body is larger than HTTP_MAX_BODY_BYTES. */
  payload_too_large: 413,
  /** Per-user write rate exceeded; `Retry-After` says when to try again. */
  rate_limited: 429,
  /** The store did not answer; nothing was written. */
  store_unavailable: 503,
  /** The server is shutting down and takes no new work. */
  shutting_down: 503,
  /** Second Me has no Agents Core configured (AGENTS_SERVICE_URL / AGENTS_TRANSPORT). */
  agents_core_not_configured: 503,
  /** Agents Core could not be reached (connection refused or reset, nobody on the subject), after one retry. */
  agents_core_unreachable: 502,
  /** Agents Core answered with an HTTP error status. */
  agents_core_error: 502,
  /** Agents Core did not answer within SECONDME_TIMEOUT_MS (not retried: the agent may still be working). */
  agents_core_timeout: 504,
  /** Agents Core answered something that is not JSON or has no non-empty `reply`, `output` or `text`. */
  bad_agent_reply: 502,
  /** A bug on our side; the log has the details. */
  internal: 500,
  // WebSocket-only codes (sent in error frames; the status is what an HTTP twin would use).
  /** A socket frame that is not a JSON object. */
  invalid_frame: 400,
  /** A socket frame whose `event` this socket does not accept. */
  unknown_event: 400,
  /** A socket frame larger than WS_MAX_FRAME_BYTES; the socket is then closed with 1009. */
  frame_too_large: 413,
  /** A frame naming a room other than the one the socket is connected to. */
  room_mismatch: 400,
  /** A heartbeat for a user other than the token's subject (ignored). */
  user_mismatch: 403,
  /** Recovery with `since` missed more than ROOM_RECOVERY_MAX_MESSAGES; page the rest over HTTP. */
  recovery_truncated: 200,
  /** The socket's token expired without an `auth.refresh`; it is closed with 4001. */
  token_expired: 401,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** An error with a stable code from {@link ERROR_STATUS}; the message is safe to show a client. */
export class AppError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** Seconds after which a retry may succeed (sent as `Retry-After` on 429/503). */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
    this.name = "AppError";
    this.status = ERROR_STATUS[code];
  }
}

/** WebSocket close codes used by the server (4000–4999 are the application's range). */
export const CLOSE = {
  /** Server shutting down (RFC 6455 "going away"); reconnect elsewhere or later. */
  goingAway: 1001,
  /** A frame over WS_MAX_FRAME_BYTES (RFC 6455 "message too big"). */
  frameTooLarge: 1009,
  /** Internal error. */
  internal: 1011,
  /**
   * Slow consumer: the socket's send buffer stayed over WS_MAX_BUFFERED_BYTES, so live messages
   * could not be delivered. Reconnect with `?since=<last message id>` to recover what was missed.
   */
  slowConsumer: 4008,
  /**
   * The socket's token expired and no `auth.refresh` frame replaced it in time. Reconnect with a
   * fresh token (and `since`, to get what was missed).
   */
  tokenExpired: 4001,
} as const;
