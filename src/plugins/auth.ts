/**
 * Auth plugin (SPEC "Auth"): resolves `principal` from `Authorization: Bearer <JWT>` on every
 * request; anonymous requests get `null`, a present but invalid token is a 401 even on reads.
 * Routes that write call {@link requireUser}.
 */
import { Elysia } from "elysia";
import type { Principal, TokenVerifier } from "../auth/tokens.ts";
import { AppError } from "../engine/errors.ts";

/** @example app.use(authPlugin(verifier)).post("/x", ({ principal }) => requireUser(principal)) */
export function authPlugin(verifier: TokenVerifier) {
  return new Elysia({ name: "auth" }).resolve({ as: "global" }, ({ headers }) => ({
    principal: verifier.fromAuthorization(headers.authorization),
  }));
}

/**
 * @returns the user id of a verified token
 * @throws AppError `unauthorized` for anonymous requests
 */
export function requireUser(principal: Principal | null): string {
  if (!principal) throw new AppError("unauthorized", "this needs a token: Authorization: Bearer <JWT>");
  return principal.userId;
}
