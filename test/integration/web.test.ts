/**
 * What the server gives a browser: the page and its bundle, `/swagger` from embedded files only,
 * and the local sign-in, which answers only loopback clients of a server that made its own secret.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { networkInterfaces } from "node:os";
import { startTestCity, type TestCity } from "../helpers/city.ts";

describe("web routes", () => {
  let own: TestCity; // no JWT_SECRET: it made its own
  let configured: TestCity; // JWT_SECRET set
  beforeAll(async () => {
    own = await startTestCity({ JWT_SECRET: "" });
    configured = await startTestCity();
  });
  afterAll(async () => {
    await own?.dispose();
    await configured?.dispose();
  });

  test("/ is the page; every script and stylesheet it names is served by the same server", async () => {
    const res = await own.http("/");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/html");
    const html = await res.text();
    const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(assets.length).toBeGreaterThanOrEqual(2);
    for (const a of assets) {
      expect(a.startsWith("/")).toBe(true);
      const asset = await own.http(a);
      expect([a, asset.status]).toEqual([a, 200]);
      expect((await asset.arrayBuffer()).byteLength).toBeGreaterThan(100);
    }
  });

  test("/swagger names only its own embedded files, which are served", async () => {
    const html = await (await own.http("/swagger")).text();
    const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(assets.sort()).toEqual(["/swagger/assets/swagger-ui-bundle.js", "/swagger/assets/swagger-ui.css"]);
    for (const a of assets) expect((await own.http(a)).status).toBe(200);
    expect(html).toContain('url: "/swagger/json"');
    expect((await own.http("/swagger/json")).status).toBe(200);
  });

  test("local sign-in: a working token for a loopback client of a server with its own secret", async () => {
    const res = await own.http("/auth/local-token", { method: "POST", json: { user_id: "u_local" } });
    expect(res.status).toBe(200);
    const { token, expires_at } = (await res.json()) as { token: string; expires_at: string };
    expect(Date.parse(expires_at) - Date.now()).toBeGreaterThan(7 * 3600_000);
    const posted = await own.http("/city/rooms/room_city_general/messages", { method: "POST", token, json: { body: "signed in locally" } });
    expect(posted.status).toBe(201);
    expect(((await posted.json()) as { author_user_id: string }).author_user_id).toBe("u_local");
    const bad = await own.http("/auth/local-token", { method: "POST", json: { user_id: "alice" } });
    expect([bad.status, ((await bad.json()) as any).error.code]).toEqual([400, "validation_failed"]);
    const big = await own.http("/auth/local-token", { method: "POST", json: { user_id: "u_x", pad: "x".repeat(2000) } });
    expect([big.status, ((await big.json()) as any).error.code]).toEqual([413, "payload_too_large"]);
  });

  // A non-loopback address of this machine, if it has one, to reach a server listening on all of them.
  const lan = Object.values(networkInterfaces()).flat().find((i) => i && i.family === "IPv4" && !i.internal)?.address;
  test.skipIf(!lan)("local sign-in is refused (403) to a client on another address, even with the server's own secret", async () => {
    const open = await startTestCity({ JWT_SECRET: "", HOST: "0.0.0.0" });
    try {
      const port = new URL(open.url).port;
      const res = await fetch(`http://${lan}:${port}/auth/local-token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: "u_x" }) });
      expect(res.status).toBe(403);
      expect((await open.http("/auth/local-token", { method: "POST", json: { user_id: "u_x" } })).status).toBe(200);
    } finally {
      await open.dispose();
    }
  });

  test("local sign-in is refused (403) by a server whose secret was configured", async () => {
    const res = await configured.http("/auth/local-token", { method: "POST", json: { user_id: "u_local" } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as any).error.code).toBe("forbidden");
  });
});
