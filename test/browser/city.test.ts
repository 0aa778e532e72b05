/**
 * The live page in a real Chromium (Debian's `chromium` driven by `playwright-core`), served by the
 * compiled binary on its embedded default plus NATS for the Living Map: two pages chat, an online
 * count changes when a third joins, the map moves when the simulator publishes, and `/swagger`
 * renders with every request outside the server refused. Screenshots go to a temporary directory,
 * or with UPDATE_SCREENSHOTS=1 to `docs/screenshots/`, where the README shows them (so a test run
 * leaves the checkout as it was).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { compiledBinary, startBinary, stopBinary, type RunningBinary } from "../helpers/binary.ts";
import { waitFor } from "../helpers/city.ts";
import { chromiumPath, engineUrl, randomSuffix } from "../helpers/engines.ts";

const SUITE = "the page in Chromium";
// A real browser on 2 shared cores: one signed-in page takes 1-2 s to render and open its sockets,
// and these tests open up to three. At bun's default 5 s a slow minute timed a test out, and the
// runner then killed Chromium under the tests after it (2026-12-02: 4.4 to 6.6 s each, alone).
const BROWSER_TEST_MS = 30_000;
const browserPath = chromiumPath(SUITE);
const nats = engineUrl("NATS_URL", SUITE);
const SHOTS = process.env.UPDATE_SCREENSHOTS === "1" ? path.join(import.meta.dir, "../../docs/screenshots") : path.join(tmpdir(), `dc-shots-${randomSuffix()}`);

describe.skipIf(!browserPath || !nats)(SUITE, () => {
  const work = mkdtempSync(path.join(tmpdir(), "dc-browser-"));
  const prefix = `t_${randomSuffix()}`;
  let city: RunningBinary;
  let browser: Browser;
  /** Requests to anywhere but the server, per page: each is refused, and must never happen. */
  const outside: string[] = [];
  const pages: Page[] = [];

  /** A page that may talk to the server only; anything else is aborted and recorded. */
  const open = async (urlPath = "/"): Promise<Page> => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 800 } });
    pages.push(page);
    await page.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith(city.url) || url.startsWith(city.wsUrl)) return route.continue();
      outside.push(url);
      return route.abort();
    });
    await page.goto(`${city.url}${urlPath}`);
    return page;
  };
  const signIn = async (user: string): Promise<Page> => {
    const page = await open();
    await page.getByTestId("user-id").fill(user);
    await page.getByTestId("sign-in").click();
    await page.getByTestId("signed-in").waitFor();
    await page.locator('[data-testid="status-room"][data-status="open"]').waitFor();
    await page.locator('[data-testid="status-presence"][data-status="open"]').waitFor();
    return page;
  };
  const online = (page: Page, slug: string) => page.getByTestId(`room-${slug}`).getAttribute("data-online").then(Number);

  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    // No JWT_SECRET: the binary makes its own, so the page's local sign-in answers this machine.
    city = await startBinary({ NATS_URL: nats!, NATS_SUBJECT_PREFIX: prefix, LIVING_MAP_JETSTREAM: "off", LOG_LEVEL: "info", ROOM_PRESENCE_THROTTLE_MS: "200" }, work);
    browser = await chromium.launch({ executablePath: browserPath!, args: ["--no-sandbox"] });
  });

  // Each test's pages close after it: every open page keeps rendering (and its sockets open).
  afterEach(async () => {
    for (const p of pages.splice(0)) await p.close().catch(() => {});
  });

  afterAll(async () => {
    for (const p of pages) await p.close().catch(() => {});
    await browser?.close();
    if (city && city.proc.exitCode === null) await stopBinary(city);
    rmSync(work, { recursive: true, force: true });
    if (process.env.UPDATE_SCREENSHOTS !== "1") rmSync(SHOTS, { recursive: true, force: true });
  });

  test("two pages chat: typing shows on the other page, then the message, each once", async () => {
    const alice = await signIn("u_alice");
    const bob = await signIn("u_bob");
    await alice.getByTestId("composer").pressSequentially("hi", { delay: 20 });
    await bob.getByTestId("typing-line").filter({ hasText: "u_alice typing" }).waitFor();
    const text = `Привіт, Боб! ${randomSuffix()}`;
    await alice.getByTestId("composer").fill(text);
    await alice.getByTestId("send").click();
    await bob.getByTestId("message").filter({ hasText: text }).waitFor();
    const reply = `Привіт, Алісо! ${randomSuffix()}`;
    await bob.getByTestId("composer").fill(reply);
    await bob.getByTestId("composer").press("Enter");
    await alice.getByTestId("message").filter({ hasText: reply }).waitFor();
    // Each message once on both pages, in seq order.
    for (const page of [alice, bob]) {
      expect(await page.getByTestId("message").filter({ hasText: text }).count()).toBe(1);
      expect(await page.getByTestId("message").filter({ hasText: reply }).count()).toBe(1);
      const seqs = (await page.getByTestId("message").evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-seq")))));
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    }
    await alice.screenshot({ path: path.join(SHOTS, "chat.png") });
    expect(outside).toEqual([]);
  }, BROWSER_TEST_MS);

  test("the online count of a room changes on another page when a third person joins, and again when they leave", async () => {
    // In a room of their own (science), so the other tests' pages do not count.
    const into = async (page: Page) => {
      await page.getByTestId("room-science").click();
      await page.locator('[data-testid="room-science"].active').waitFor();
    };
    const dave = await signIn("u_dave");
    await into(dave);
    const erin = await signIn("u_erin");
    await into(erin);
    await waitFor(() => online(dave, "science"), (n) => n === 2, 5000);
    const frank = await signIn("u_frank");
    await into(frank);
    await waitFor(() => online(dave, "science"), (n) => n === 3, 5000);
    await waitFor(() => online(erin, "science"), (n) => n === 3, 5000);
    await frank.close();
    await waitFor(() => online(dave, "science"), (n) => n === 2, 5000);
    expect(outside).toEqual([]);
  }, BROWSER_TEST_MS);

  test("the map moves when the simulator publishes", async () => {
    const alice = await signIn("u_mapper");
    await alice.locator('[data-testid="status-map"][data-status="open"]').waitFor();
    const before = Number(await alice.getByTestId("map-events").getAttribute("data-count"));
    const nodesBefore = await alice.getByTestId("map").getAttribute("data-version");
    const sim = Bun.spawn([compiledBinary(), "simulate", "--rate", "40", "--duration", "1", "--nodes", "6", "--agents", "12", "--seed", "7"], {
      env: { PATH: process.env.PATH ?? "", NATS_URL: nats!, NATS_SUBJECT_PREFIX: prefix, LOG_LEVEL: "warn" },
      stdout: "ignore",
      stderr: "pipe",
    });
    expect(await sim.exited).toBe(0);
    await waitFor(async () => Number(await alice.getByTestId("map-events").getAttribute("data-count")), (n) => n > before + 10);
    // The snapshot the page holds changed (new nodes read back, metrics applied in place).
    await waitFor(() => alice.getByTestId("map").getAttribute("data-version"), (v) => v !== nodesBefore);
    await waitFor(() => alice.getByTestId("map").getAttribute("data-last-event"), (v) => !!v);
    await alice.waitForTimeout(300); // one more animation frame with the flashes on
    await alice.screenshot({ path: path.join(SHOTS, "city.png") });
    expect(outside).toEqual([]);
  }, BROWSER_TEST_MS);

  test("/swagger renders every route from the binary's own files, with the network beyond the server cut off", async () => {
    const page = await open("/swagger");
    await page.locator(".swagger-ui .opblock").first().waitFor({ timeout: 10_000 });
    expect(await page.locator(".swagger-ui .opblock").count()).toBeGreaterThan(15);
    await page.screenshot({ path: path.join(SHOTS, "swagger.png") });
    expect(outside).toEqual([]);
  }, BROWSER_TEST_MS);
});
