/**
 * Bearer tokens (SPEC "Auth"): JWTs whose `sub` is the user id (`u_*`), HS256 with JWT_SECRET, and
 * RS256 with JWT_PUBLIC_KEY when configured. Signatures, algorithms, issuer and audience are
 * fast-jwt's (synchronous, node:crypto): a connect storm verifies each new token on the event loop
 * in ~6 µs, where WebCrypto's asynchronous verify cost 20–40 µs and two thread hops (bench/README
 * "Connections"). The time claims (`exp`, `nbf`) are checked here against the verifier's Clock, so
 * tests run on fake time; nothing here does crypto by hand.
 */
import { USER_ID_RE } from "../ids.ts";
import { createPublicKey } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { createSigner, createVerifier, TokenError } from "fast-jwt";
import { systemClock, type Clock } from "../clock.ts";
import { AppError } from "../engine/errors.ts";

/** User ids as the seeds write them: `u_` then 1 to 120 of `[A-Za-z0-9._-]`. */
export { USER_ID_RE };

export interface TokenVerifierOptions {
  /** HS256 key. */
  secret: string;
  /** Time for `exp`/`nbf` checks and the cache (default: the system clock). */
  clock?: Clock;
  /** PEM SPKI key for RS256 tokens from an external issuer. */
  publicKeyPem?: string | null;
  issuer?: string | null;
  audience?: string | null;
  /**
   * Longest lifetime a token is honoured for, s (JWT_MAX_TTL_SECONDS): a token is good until the
   * earlier of its `exp` and `iat` + this (a token without `iat` counts from when it is first
   * verified here). Tokens without `exp` are therefore capped, never eternal. Default 30 days.
   */
  maxTtlSeconds?: number;
}

/** Who a verified token speaks for, and until when. */
export interface Principal {
  userId: string;
  /** When the token stops being honoured (epoch ms): its `exp`, capped by the maximum lifetime. */
  expiresAt: number;
  /** The token's `role` claim when it is a string (`"admin"` may change rooms: SPEC `PATCH /city/rooms/{room_id}`). */
  role?: string;
}

/** Default maximum token lifetime, s (the `token` command's default lifetime). */
export const DEFAULT_MAX_TTL_SECONDS = 30 * 24 * 3600;

/** Verified tokens remembered (a reconnect storm presents the same tokens again). */
const CACHE_MAX = 10_000;
/** Clock skew allowed on `exp` and `nbf`, ms. */
const CLOCK_TOLERANCE_MS = 5000;

type PayloadCheck = (token: string) => Record<string, unknown>;

export class TokenVerifier {
  /** token → who it is (with its expiry); the oldest entry goes first when it is full (a hit does not reorder it: a connect storm reads it thousands of times a second). */
  private readonly cache = new Map<string, Principal>();
  /** When a token without `iat` was first seen (its lifetime counts from then), by token. */
  private readonly firstSeen = new Map<string, number>();

  private constructor(
    private readonly hs: PayloadCheck,
    private readonly rs: PayloadCheck | null,
    private readonly opts: TokenVerifierOptions,
  ) {}

  /** @throws Error when the public key is not an RSA public key (`auth: JWT_PUBLIC_KEY …`) */
  static async create(opts: TokenVerifierOptions): Promise<TokenVerifier> {
    // Signature, algorithm, issuer and audience here; the time claims against our Clock below.
    const common = {
      ignoreExpiration: true, ignoreNotBefore: true, cache: false as const,
      ...(opts.issuer ? { allowedIss: opts.issuer } : {}), ...(opts.audience ? { allowedAud: opts.audience } : {}),
      requiredClaims: [...(opts.issuer ? ["iss"] : []), ...(opts.audience ? ["aud"] : [])],
    };
    const hs = createVerifier({ ...common, key: opts.secret, algorithms: ["HS256"] }) as PayloadCheck;
    let rs: PayloadCheck | null = null;
    if (opts.publicKeyPem) {
      try {
        if (createPublicKey(opts.publicKeyPem).asymmetricKeyType !== "rsa") throw new Error("not an RSA key");
        rs = createVerifier({ ...common, key: opts.publicKeyPem, algorithms: ["RS256"] }) as PayloadCheck;
      } catch (err) {
        throw new Error(`auth: JWT_PUBLIC_KEY is not an RS256 public key: ${(err as Error).message}`);
      }
    }
    return new TokenVerifier(hs, rs, opts);
  }

  /**
   * Verifies a compact JWT, synchronously (HS256 and RS256 verification take microseconds; a socket
   * upgrade that needs nothing else is answered in the same call, see SocketRoute.prepare).
   * @returns the principal named by `sub`, with when the token stops being honoured
   * @throws AppError `unauthorized` for a malformed, forged, expired (or past the maximum
   *   lifetime) or not-yet-valid token, a wrong issuer/audience, or a `sub` that is not a user id
   */
  verify(token: string): Principal {
    const now = (this.opts.clock ?? systemClock).now();
    const hit = this.cache.get(token);
    if (hit) {
      if (hit.expiresAt > now) return hit;
      this.cache.delete(token);
    }
    let payload: Record<string, unknown>;
    try {
      payload = (this.rs && algorithmOf(token) === "RS256" ? this.rs : this.hs)(token);
    } catch (err) {
      if (err instanceof TokenError && (err.code === TokenError.codes.invalidClaimValue || err.code === TokenError.codes.missingRequiredClaim)) {
        throw new AppError("unauthorized", `token claim rejected: ${err.message}`);
      }
      throw new AppError("unauthorized", "invalid token");
    }
    const { sub, exp, nbf, iat, role } = payload;
    for (const [name, v] of [["exp", exp], ["nbf", nbf], ["iat", iat]] as const) {
      if (v !== undefined && (typeof v !== "number" || !Number.isFinite(v))) throw new AppError("unauthorized", `token claim rejected: ${name} must be a number`);
    }
    if (typeof exp === "number" && exp * 1000 + CLOCK_TOLERANCE_MS <= now) throw new AppError("unauthorized", "token expired");
    if (typeof nbf === "number" && nbf * 1000 - CLOCK_TOLERANCE_MS > now) throw new AppError("unauthorized", "token claim rejected: nbf is in the future");
    if (typeof sub !== "string" || !USER_ID_RE.test(sub)) throw new AppError("unauthorized", "token sub must be a user id (u_…)");
    const maxMs = (this.opts.maxTtlSeconds ?? DEFAULT_MAX_TTL_SECONDS) * 1000;
    let issued = typeof iat === "number" ? iat * 1000 : this.firstSeen.get(token);
    if (issued === undefined) {
      issued = now;
      if (this.firstSeen.size >= CACHE_MAX) this.firstSeen.delete(this.firstSeen.keys().next().value!);
      this.firstSeen.set(token, now);
    }
    const expiresAt = Math.min(typeof exp === "number" ? exp * 1000 + CLOCK_TOLERANCE_MS : Infinity, issued + maxMs);
    if (expiresAt <= now) throw new AppError("unauthorized", "token expired: older than the maximum token lifetime (JWT_MAX_TTL_SECONDS)");
    const principal: Principal = typeof role === "string" ? { userId: sub, expiresAt, role } : { userId: sub, expiresAt };
    if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(token, principal);
    return principal;
  }

  /**
   * Reads the principal from an `Authorization` header value.
   * @returns `null` when there is no header (anonymous)
   * @throws AppError `unauthorized` when a header is present but is not a valid bearer token
   */
  fromAuthorization(header: string | null | undefined): Principal | null {
    if (header === null || header === undefined || header === "") return null;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw new AppError("unauthorized", "Authorization must be 'Bearer <token>'");
    return this.verify(m[1]!);
  }
}

/** The `alg` of a compact JWT's header, to pick the verifier (which checks it again); `null` when unreadable. */
function algorithmOf(token: string): string | null {
  const dot = token.indexOf(".");
  if (dot <= 0) return null;
  try {
    const alg = JSON.parse(Buffer.from(token.slice(0, dot), "base64url").toString("utf8"))?.alg;
    return typeof alg === "string" ? alg : null;
  } catch {
    return null;
  }
}

/**
 * Signs an HS256 token for `userId`.
 * @param ttlSeconds lifetime; the token carries `iat` and `exp`
 * @param claims `iss`, `aud` and a `role` claim (`admin` may change rooms) when given
 * @throws Error when `userId` is not a user id
 */
export async function signToken(
  secret: string,
  userId: string,
  ttlSeconds: number,
  claims: { issuer?: string | null; audience?: string | null; role?: string | null } = {},
): Promise<string> {
  if (!USER_ID_RE.test(userId)) throw new Error(`token: user id must match ${USER_ID_RE.source}, got ${JSON.stringify(userId)}`);
  const iat = Math.floor(Date.now() / 1000);
  const payload: Record<string, unknown> = { sub: userId, iat, exp: iat + ttlSeconds };
  if (claims.role) payload.role = claims.role;
  if (claims.issuer) payload.iss = claims.issuer;
  if (claims.audience) payload.aud = claims.audience;
  return createSigner({ key: secret, algorithm: "HS256" })(payload);
}

/**
 * The HS256 secret: JWT_SECRET when set, else `<dataDir>/jwt-secret`, created (mode 0600) with 48
 * random bytes on first use. Two processes starting at once agree on one file (exclusive create).
 */
export function resolveSecret(configured: string | null, dataDir: string): { secret: string; generated: boolean; file: string | null } {
  if (configured) return { secret: configured, generated: false, file: null };
  const file = path.join(dataDir, "jwt-secret");
  mkdirSync(dataDir, { recursive: true });
  const fresh = Buffer.from(crypto.getRandomValues(new Uint8Array(48))).toString("base64url");
  try {
    writeFileSync(file, fresh + "\n", { flag: "wx", mode: 0o600 });
    chmodSync(file, 0o600);
    return { secret: fresh, generated: true, file };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const secret = readFileSync(file, "utf8").trim();
  if (secret.length < 32) throw new Error(`auth: ${file} holds fewer than 32 characters; delete it to make a new one`);
  return { secret, generated: false, file };
}

/**
 * A short public fingerprint of an HS256 secret (16 hex characters of a domain-separated SHA-256),
 * served at `GET /auth/fingerprint` so `daarion-city token` can tell that it signs with a secret the
 * server beside it does not use. It reveals nothing a token signed with the secret does not.
 */
export function secretFingerprint(secret: string): string {
  return new Bun.CryptoHasher("sha256").update(`daarion-city/jwt-fingerprint\n${secret}`).digest("hex").slice(0, 16);
}
