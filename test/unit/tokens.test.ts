import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { exportSPKI, generateKeyPair, SignJWT } from "jose";
import { resolveSecret, signToken, TokenVerifier } from "../../src/auth/tokens.ts";
import { ManualClock } from "../../src/clock.ts";

const SECRET = "k".repeat(40);

/** What `fn` throws (verification is synchronous); fails the test when it returns. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error("expected a throw");
}

describe("tokens", () => {
  test("a signed token verifies to its subject", async () => {
    const v = await TokenVerifier.create({ secret: SECRET });
    expect(v.verify(await signToken(SECRET, "u_alice", 60))).toMatchObject({ userId: "u_alice" });
    expect(v.fromAuthorization(`Bearer ${await signToken(SECRET, "u_bob", 60)}`)).toMatchObject({ userId: "u_bob" });
    expect(v.fromAuthorization(undefined)).toBeNull();
  });

  test("forged, expired, wrong-secret, non-user and alg=none tokens are unauthorized", async () => {
    const v = await TokenVerifier.create({ secret: SECRET });
    const good = await signToken(SECRET, "u_alice", 60);
    const bad = [
      good.slice(0, -2) + "xx",
      await signToken(SECRET, "u_alice", -30),
      await signToken("z".repeat(40), "u_alice", 60),
      await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("root").setExpirationTime("1h").sign(new TextEncoder().encode(SECRET)),
      `${btoa(JSON.stringify({ alg: "none" })).replace(/=/g, "")}.${btoa(JSON.stringify({ sub: "u_alice" })).replace(/=/g, "")}.`,
      "garbage",
    ];
    for (const t of bad) expect(thrown(() => v.verify(t))).toMatchObject({ code: "unauthorized", status: 401 });
    expect(() => v.verify(bad[1]!)).toThrow("token expired");
    expect(thrown(() => v.fromAuthorization("Token abc"))).toMatchObject({ code: "unauthorized" });
  });

  test("issuer and audience are enforced when configured", async () => {
    const v = await TokenVerifier.create({ secret: SECRET, issuer: "daarion", audience: "city" });
    expect(v.verify(await signToken(SECRET, "u_a", 60, { issuer: "daarion", audience: "city" }))).toMatchObject({ userId: "u_a" });
    const otherIssuer = await signToken(SECRET, "u_a", 60, { issuer: "other", audience: "city" });
    expect(() => v.verify(otherIssuer)).toThrow("claim rejected");
    const otherAudience = await signToken(SECRET, "u_a", 60, { issuer: "daarion", audience: "elsewhere" });
    expect(() => v.verify(otherAudience)).toThrow("claim rejected");
    const neither = await signToken(SECRET, "u_a", 60);
    expect(thrown(() => v.verify(neither))).toMatchObject({ code: "unauthorized" });
  });

  test("RS256 tokens verify with JWT_PUBLIC_KEY, next to HS256", async () => {
    const { publicKey, privateKey } = await generateKeyPair("RS256");
    const v = await TokenVerifier.create({ secret: SECRET, publicKeyPem: await exportSPKI(publicKey) });
    const rs = await new SignJWT({}).setProtectedHeader({ alg: "RS256" }).setSubject("u_ext").setExpirationTime("1h").sign(privateKey);
    expect(v.verify(rs)).toMatchObject({ userId: "u_ext" });
    expect(v.verify(await signToken(SECRET, "u_local", 60))).toMatchObject({ userId: "u_local" });
    const hsOnly = await TokenVerifier.create({ secret: SECRET });
    expect(thrown(() => hsOnly.verify(rs))).toMatchObject({ code: "unauthorized" });
  });

  test("time claims follow the verifier's clock: nbf in the future is refused until it comes (5 s tolerance); a non-numeric exp is refused", async () => {
    const clock = new ManualClock(Date.now());
    const v = await TokenVerifier.create({ secret: SECRET, clock });
    const key = new TextEncoder().encode(SECRET);
    const nbf = Math.floor(clock.now() / 1000) + 60;
    const later = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("u_later").setNotBefore(nbf).setExpirationTime(nbf + 600).sign(key);
    expect(() => v.verify(later)).toThrow("nbf");
    clock.advance(60_000 - 6_000);
    expect(thrown(() => v.verify(later))).toMatchObject({ code: "unauthorized" });
    clock.advance(2_000); // within the tolerance now
    expect(v.verify(later)).toMatchObject({ userId: "u_later" });
    const odd = await new SignJWT({ exp: "tomorrow" } as any).setProtectedHeader({ alg: "HS256" }).setSubject("u_odd").sign(key);
    expect(thrown(() => v.verify(odd))).toMatchObject({ code: "unauthorized", message: expect.stringContaining("exp") });
  });

  test("an RS256 token from another key, or an HS256 token signed with the public key's text, is refused", async () => {
    const { publicKey } = await generateKeyPair("RS256");
    const other = await generateKeyPair("RS256");
    const pem = await exportSPKI(publicKey);
    const v = await TokenVerifier.create({ secret: SECRET, publicKeyPem: pem });
    const forged = await new SignJWT({}).setProtectedHeader({ alg: "RS256" }).setSubject("u_ext").setExpirationTime("1h").sign(other.privateKey);
    expect(() => v.verify(forged)).toThrow("invalid token");
    const confused = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("u_ext").setExpirationTime("1h").sign(new TextEncoder().encode(pem));
    expect(() => v.verify(confused)).toThrow("invalid token");
    await expect(TokenVerifier.create({ secret: SECRET, publicKeyPem: "not a key" })).rejects.toThrow("JWT_PUBLIC_KEY");
  });

  test("signToken refuses a user id that is not u_*", async () => {
    await expect(signToken(SECRET, "alice", 60)).rejects.toThrow("user id must match");
  });

  test("resolveSecret creates one 0600 secret in DATA_DIR and reuses it", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "dc-secret-"));
    try {
      const a = resolveSecret(null, dir);
      const b = resolveSecret(null, dir);
      expect(a.generated).toBe(true);
      expect(b.generated).toBe(false);
      expect(b.secret).toBe(a.secret);
      expect(a.secret.length).toBeGreaterThanOrEqual(32);
      expect(readFileSync(path.join(dir, "jwt-secret"), "utf8").trim()).toBe(a.secret);
      expect(statSync(path.join(dir, "jwt-secret")).mode & 0o777).toBe(0o600);
      expect(resolveSecret(SECRET, dir)).toEqual({ secret: SECRET, generated: false, file: null });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("token cache", () => {
  test("a cached token still expires at its exp (plus the 5 s tolerance)", async () => {
    const clock = new ManualClock(Date.now());
    const v = await TokenVerifier.create({ secret: SECRET, clock });
    const t = await signToken(SECRET, "u_short", 10);
    expect(v.verify(t)).toMatchObject({ userId: "u_short" });
    clock.advance(9_000);
    expect(v.verify(t)).toMatchObject({ userId: "u_short" }); // from the cache
    clock.advance(7_000);
    expect(() => v.verify(t)).toThrow("token expired");
  });
});

describe("token lifetime", () => {
  test("a principal carries when its token stops being honoured: exp (with the 5 s tolerance), capped by the maximum lifetime", async () => {
    const clock = new ManualClock(Date.now());
    const v = await TokenVerifier.create({ secret: SECRET, clock, maxTtlSeconds: 3600 });
    const short = await signToken(SECRET, "u_a", 60);
    const { exp } = JSON.parse(atob(short.split(".")[1]!)) as { exp: number };
    expect((v.verify(short)).expiresAt).toBe(exp * 1000 + 5000);
    const long = await signToken(SECRET, "u_a", 7 * 24 * 3600);
    const { iat } = JSON.parse(atob(long.split(".")[1]!)) as { iat: number };
    expect((v.verify(long)).expiresAt).toBe(iat * 1000 + 3600_000);
  });

  test("a token without exp is honoured for the maximum lifetime only, from its iat or else its first use", async () => {
    const clock = new ManualClock(Date.now());
    const v = await TokenVerifier.create({ secret: SECRET, clock, maxTtlSeconds: 60 });
    const key = new TextEncoder().encode(SECRET);
    const noExp = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("u_forever").setIssuedAt(Math.floor(clock.now() / 1000)).sign(key);
    const bare = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("u_bare").sign(key);
    expect((v.verify(noExp)).expiresAt).toBe(Math.floor(clock.now() / 1000) * 1000 + 60_000);
    const first = clock.now();
    expect((v.verify(bare)).expiresAt).toBe(first + 60_000);
    clock.advance(61_000);
    expect(() => v.verify(noExp)).toThrow("maximum token lifetime");
    expect(() => v.verify(bare)).toThrow("maximum token lifetime");
  });
});
