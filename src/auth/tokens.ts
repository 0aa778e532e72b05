/**
 * Bearer tokens (SPEC "Auth"): JWTs whose `sub` is the user id (`u_*`), HS256 with JWT_SECRET, and
 * RS256 with JWT_PUBLIC_KEY when configured. Signing and verification are jose's; nothing here
 * does crypto by hand.
 */
import { USER_ID_RE } from "../ids.ts";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { errors as joseErrors, importSPKI, jwtVerify, SignJWT, type CryptoKey, type JWTVerifyGetKey } from "jose";
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

export class TokenVerifier {
  /** token → who it is (with its expiry); insertion order doubles as LRU order. */
  private readonly cache = new Map<string, Principal>();
  /** When a token without `iat` was first seen (its lifetime counts from then), by token. */
  private readonly firstSeen = new Map<string, number>();

  private constructor(
    private readonly getKey: JWTVerifyGetKey,
    private readonly algorithms: string[],
    private readonly opts: TokenVerifierOptions,
  ) {}

  /** @throws Error when the public key cannot be parsed */
  static async create(opts: TokenVerifierOptions): Promise<TokenVerifier> {
    // Imported once: given raw bytes, jose would import the key again on every verification.
    const hmac = await crypto.subtle.importKey("raw", new TextEncoder().encode(opts.secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
    let rsa: CryptoKey | null = null;
    if (opts.publicKeyPem) {
      try {
        rsa = await importSPKI(opts.publicKeyPem, "RS256");
      } catch (err) {
        throw new Error(`auth: JWT_PUBLIC_KEY is not an RS256 public key: ${(err as Error).message}`);
      }
    }
    const getKey: JWTVerifyGetKey = (header) => (header.alg === "RS256" && rsa ? rsa : hmac);
    return new TokenVerifier(getKey, rsa ? ["HS256", "RS256"] : ["HS256"], opts);
  }

  /**
   * Verifies a compact JWT.
   * @returns the principal named by `sub`, with when the token stops being honoured
   * @throws AppError `unauthorized` for a malformed, forged, expired (or past the maximum
   *   lifetime) or not-yet-valid token, a wrong issuer/audience, or a `sub` that is not a user id
   */
  async verify(token: string): Promise<Principal> {
    const now = (this.opts.clock ?? systemClock).now();
    const hit = this.cache.get(token);
    if (hit) {
      this.cache.delete(token);
      if (hit.expiresAt > now) {
        this.cache.set(token, hit);
        return hit;
      }
    }
    let sub: unknown;
    let exp: number | undefined;
    let iat: number | undefined;
    let role: unknown;
    try {
      const { payload } = await jwtVerify(token, this.getKey, {
        algorithms: this.algorithms,
        issuer: this.opts.issuer ?? undefined,
        audience: this.opts.audience ?? undefined,
        clockTolerance: 5,
        currentDate: new Date(now),
      });
      sub = payload.sub;
      exp = payload.exp;
      iat = payload.iat;
      role = payload.role;
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) throw new AppError("unauthorized", "token expired");
      if (err instanceof joseErrors.JWTClaimValidationFailed) throw new AppError("unauthorized", `token claim rejected: ${err.claim}`);
      throw new AppError("unauthorized", "invalid token");
    }
    if (typeof sub !== "string" || !USER_ID_RE.test(sub)) throw new AppError("unauthorized", "token sub must be a user id (u_…)");
    const maxMs = (this.opts.maxTtlSeconds ?? DEFAULT_MAX_TTL_SECONDS) * 1000;
    let issued = typeof iat === "number" ? iat * 1000 : this.firstSeen.get(token);
    if (issued === undefined) {
      issued = now;
      if (this.firstSeen.size >= CACHE_MAX) this.firstSeen.delete(this.firstSeen.keys().next().value!);
      this.firstSeen.set(token, now);
    }
    const expiresAt = Math.min(typeof exp === "number" ? exp * 1000 + 5000 : Infinity, issued + maxMs);
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
  async fromAuthorization(header: string | null | undefined): Promise<Principal | null> {
    if (header === null || header === undefined || header === "") return null;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw new AppError("unauthorized", "Authorization must be 'Bearer <token>'");
    return this.verify(m[1]!);
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
  let jwt = new SignJWT(claims.role ? { role: claims.role } : {}).setProtectedHeader({ alg: "HS256", typ: "JWT" }).setSubject(userId).setIssuedAt().setExpirationTime(`${ttlSeconds}s`);
  if (claims.issuer) jwt = jwt.setIssuer(claims.issuer);
  if (claims.audience) jwt = jwt.setAudience(claims.audience);
  return jwt.sign(new TextEncoder().encode(secret));
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
