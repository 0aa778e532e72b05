/**
 * Fuzzing the whole surface (fast-check generates, shrinks and reports the seed of a failure):
 * HTTP requests over every route (methods, path parameters, query parameters, headers, bodies)
 * and socket frames over every event, against a real listening server on the embedded store and,
 * when DATABASE_URL is set, on PostgreSQL. Properties: no 5xx ever; every 4xx in the error
 * shape with a code from the catalog; a refused request or frame writes nothing; the server and
 * the socket live on (but for the documented oversize close).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fc from "fast-check";
import { ERROR_STATUS } from "../../src/engine/errors.ts";
import { storeVariants } from "../helpers/engines.ts";
import { startTestCity, TestSocket, type TestCity } from "../helpers/city.ts";

/** Runs per property; the whole file stays under a minute in CI. */
const HTTP_RUNS = Number(process.env.FUZZ_HTTP_RUNS ?? 4000);
const WS_RUNS = Number(process.env.FUZZ_WS_RUNS ?? 1500);
const CODES = new Set(Object.keys(ERROR_STATUS));

/**
 * The fuzz suite on one store. Each store has its own test file (`api.<store>.fuzz.test.ts`) so the
 * two run side by side under `bun test --parallel`.
 */
/**
 * The fuzz tests of one store: `http` (generated requests) or `sockets` (generated frames). One
 * file per store and part, so the four run beside each other under `bun test --parallel`.
 */
export function fuzzSuite(store: "sqlite" | "postgres", part: "http" | "sockets"): void {
  const variants = storeVariants("fuzzing").filter((v) => v.name === store);
  if (variants.length === 0) return; // storeVariants printed why (or threw under REQUIRE_ENGINES=1)
  suites(variants, part);
}


/**
 * Any code point but a lone surrogate: fast-check's `unit: "binary"`, without its one-off cost
 * (the built-in unit indexes all 1.1M code points to find its shrink slices, ~0.55 s of CPU per
 * test file; a mapped unit has no slices to find).
 */
const anyCodePoint = fc.integer({ min: 0, max: 0x10ffff - 0x800 }).map((n) => String.fromCodePoint(n < 0xd800 ? n : n + 0x800));

/** Strings a fuzzer should try: control characters, unicode, ids of every kind, numbers in odd spellings. */
const nasty = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: anyCodePoint, maxLength: 30 }),
  fc.constantFrom(
    "", " ", "\u0000", "a\u0000b", "\r\n", "\t", "%ZZ", "%00", "..%2F..%2F", "../etc", "room_city_general", "room_city_nope", "m_city_01K00000000000000000000000",
    "evt_city_01K00000000000000000000000", "u_alice", "-1", "0", "1", "200", "201", "1e6", "1e20", "0x10", "NaN", "Infinity", "null", "true", "[]", "{}",
    "💥".repeat(3), "x".repeat(5000), "' or 1=1 --", "<script>", "\\u0000",
  ),
);

const routes: [string, (p: string) => string][] = [
  ["GET", () => "/city/rooms"],
  ["POST", () => "/city/rooms"],
  ["GET", (p) => `/city/rooms/${p}`],
  ["POST", (p) => `/city/rooms/${p}/messages`],
  ["GET", (p) => `/city/rooms/${p}/messages`],
  ["POST", (p) => `/city/rooms/${p}/join`],
  ["POST", (p) => `/city/rooms/${p}/leave`],
  ["GET", () => "/city/feed"],
  ["GET", () => "/internal/city/rooms"],
  ["POST", () => "/secondme/invoke"],
  ["GET", () => "/secondme/history"],
  ["GET", () => "/secondme/profile"],
  ["POST", () => "/secondme/history/clear"],
  ["GET", () => "/healthz"],
  ["GET", () => "/readyz"],
  ["GET", (p) => `/${p}`],
];

/** Mostly valid, sometimes not: a fuzzer that never passes validation never reaches the store. */
const usually = <T,>(valid: fc.Arbitrary<T>, other: fc.Arbitrary<T>) => fc.oneof({ arbitrary: valid, weight: 3 }, { arbitrary: other, weight: 2 });
const text = usually(fc.string({ minLength: 1, maxLength: 60 }).filter((t) => t.trim().length > 0 && !/[\u0000-\u0008\u000B-\u001F]/.test(t)), nasty);
/** A body that route `i` accepts (most of the time), or anything at all. */
function bodyFor(i: number): fc.Arbitrary<string | undefined> {
  const [, path] = routes[i]!;
  const p = path("{p}");
  const fitting =
    p.endsWith("/messages") ? fc.record({ body: text }).map((o) => JSON.stringify(o))
    : p === "/city/rooms" ? fc
        .record({ name: text, slug: usually(fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,20}$/), nasty), description: fc.option(text) }, { requiredKeys: ["name", "slug"] })
        .map((o) => JSON.stringify(o))
    : p === "/secondme/invoke" ? fc.record({ prompt: text }).map((o) => JSON.stringify(o))
    : fc.constant(undefined);
  const anything = fc.oneof(
    fc.constant(undefined),
    fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
    nasty,
    fc
      .record({ body: nasty, name: nasty, slug: nasty, description: fc.option(nasty), prompt: nasty, extra: fc.option(nasty) }, { requiredKeys: [] })
      .map((o) => JSON.stringify(o)),
  );
  return usually(fitting, anything);
}

/**
 * One request arbitrary per route, built once: building them inside `chain` for every sample (a
 * new `fc.string`, `fc.stringMatching` and `constantFrom` each time, with their slices and
 * shrink maps) cost as much CPU as the requests themselves.
 */
const requestArbs = [...routes.keys()].map((route) =>
  fc.record({
    route: fc.constant(route),
    method: fc.oneof({ arbitrary: fc.constant(undefined), weight: 4 }, { arbitrary: fc.constantFrom("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"), weight: 1 }),
    param: usually(fc.constantFrom("room_city_general", "room_city_science"), fc.oneof(nasty.map(encodeURIComponent), nasty)),
    query: fc.dictionary(
      fc.constantFrom("limit", "offset", "before", "since", "events", "token", "x"),
      usually(fc.integer({ min: 1, max: 100 }).map(String), nasty),
      { maxKeys: 2 },
    ),
    auth: fc.oneof({ arbitrary: fc.constant("good"), weight: 3 }, { arbitrary: fc.constantFrom("none", "garbage", "expired", "other-scheme"), weight: 2 }),
    body: bodyFor(route),
    contentType: usually(fc.constant("application/json"), fc.constantFrom("text/plain", "application/x-www-form-urlencoded", undefined)),
  }),
);
const requestArb = fc.constantFrom(...routes.keys()).chain((route) => requestArbs[route]!);

const frameArb = fc.oneof(
  fc.record(
    {
      event: fc.oneof(fc.constantFrom("room.message.send", "room.join", "room.leave", "room.typing", "auth.refresh", "presence.heartbeat", "nope"), nasty),
      room_id: fc.oneof(fc.constant("room_city_general"), nasty),
      body: fc.oneof(nasty, fc.jsonValue({ maxDepth: 2 })),
      token: nasty,
      user_id: nasty,
    },
    { requiredKeys: [] },
  ).map((o) => JSON.stringify(o)),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
  nasty,
);

function suites(variants: ReturnType<typeof storeVariants>, part: "http" | "sockets"): void {
  for (const variant of variants) {
    describe(`fuzzing (${variant.name})`, () => {
      let city: TestCity;
      let drop: () => Promise<void>;
      const tokens: Record<string, string> = {};
      // A real Agents Core for Second Me, so a valid invoke is a 200 (without one it is a documented 503).
      const agent = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => Response.json({ reply: "ok" }) });
      beforeAll(async () => {
        const made = await variant.env();
        drop = made.drop;
        city = await startTestCity({
          ...made.env, CITY_WRITE_RATE_PER_SECOND: "0", SECONDME_RATE_PER_MINUTE: "0", AGENTS_SERVICE_URL: `http://127.0.0.1:${agent.port}`,
        });
        tokens.good = await city.token("u_fuzz");
        tokens.expired = await city.token("u_fuzz", -120);
      });
      afterAll(async () => {
        await city.dispose();
        await drop();
        agent.stop(true);
      });

      /** The rooms the last fingerprint listed: their seqs are read beside the listing. */
      let known: string[] = [];
      /**
       * What any request could change. The four reads go side by side (one round trip on
       * PostgreSQL, not two), the seqs for the rooms listed last time; when the listing differs
       * from that, the seqs are read again for the rooms it has.
       */
      const fingerprint = async () => {
        const [rooms, feed, sm, seqsOfKnown] = await Promise.all([
          city.store.listRooms({ limit: 200, offset: 0 }), city.store.listFeed({ limit: 1 }), city.store.secondmeStats("u_fuzz"), city.store.lastSeqs(known),
        ]);
        const ids = rooms.map((r) => r.id);
        const same = ids.length === known.length && ids.every((id, i) => id === known[i]);
        known = ids;
        const seqs = same ? seqsOfKnown : await city.store.lastSeqs(ids);
        return JSON.stringify([rooms.map((r) => [r.id, r.name, r.description]), ids.map((id) => seqs.get(id) ?? null), feed[0]?.id, sm.messages, sm.sessions]);
      };

      if (part === "http") test(`HTTP: ${HTTP_RUNS} generated requests: no 5xx, every 4xx in the error shape, no write on a refusal`, async () => {
        // What the store held after the last write that was let through. Taken before each request
        // that could write (not GET/HEAD) and compared: everything since the last write (reads,
        // refusals) must have left it as it was. After an accepted write it is taken again.
        let before = await fingerprint();
        let since: string[] = [];
        const unchanged = async () => {
          if (since.length === 0) return; // nothing was sent since `before` was taken
          if ((await fingerprint()) !== before) throw new Error(`something was written by one of: ${since.join(" | ")}`);
          since = [];
        };
        let cases = 0;
        const statuses: Record<number, number> = {};
        await fc.assert(
          fc.asyncProperty(requestArb, async (r) => {
            cases++;
            const [defaultMethod, path] = routes[r.route]!;
            const method = r.method ?? defaultMethod;
            const qs = new URLSearchParams(r.query).toString();
            const headers: Record<string, string> = {};
            if (r.auth === "good") headers.authorization = `Bearer ${tokens.good}`;
            else if (r.auth === "expired") headers.authorization = `Bearer ${tokens.expired}`;
            else if (r.auth === "garbage") headers.authorization = "Bearer not.a.token";
            else if (r.auth === "other-scheme") headers.authorization = "Basic dTpw";
            if (r.contentType) headers["content-type"] = r.contentType;
            const withBody = method !== "GET" && method !== "HEAD" && r.body !== undefined;
            let url = `${city.url}${path(r.param)}${qs ? `?${qs}` : ""}`;
            try {
              new URL(url);
            } catch {
              url = `${city.url}/city/rooms`; // not even a URL: nothing to send
            }
            const reads = method === "GET" || method === "HEAD";
            if (!reads) await unchanged();
            const res = await fetch(url, { method, headers, body: withBody ? r.body : undefined });
            statuses[res.status] = (statuses[res.status] ?? 0) + 1;
            const text = await res.text();
            // /readyz's own report of an engine that did not answer within its timeout (a loaded
            // machine: a PostgreSQL probe write past 1 s) is its documented answer, not an error.
            const notReady = res.status === 503 && new URL(url).pathname === "/readyz" && readinessStatus(text) === "not_ready";
            if (res.status >= 500 && !notReady) throw new Error(`${method} ${url} → ${res.status}: ${text.slice(0, 300)}`);
            if (notReady) {
              since.push(`${method} ${url} → 503 not_ready`);
            } else if (res.status >= 400) {
              const j = JSON.parse(text) as { error?: { code?: string; message?: string } };
              if (!j.error || !CODES.has(j.error.code ?? "") || typeof j.error.message !== "string") throw new Error(`${method} ${url} → ${res.status} not in the error shape: ${text.slice(0, 300)}`);
              since.push(`${method} ${url} → ${res.status}`);
            } else if (reads) {
              since.push(`${method} ${url} → ${res.status}`);
            } else {
              before = await fingerprint();
              since = [];
            }
          }),
          { numRuns: HTTP_RUNS },
        );
        await unchanged();
        expect(cases).toBe(HTTP_RUNS);
        console.log(`fuzz ${variant.name}: ${cases} HTTP requests, statuses ${JSON.stringify(statuses)}`);
        // the generator reaches past validation too: some requests were served and some wrote
        expect(statuses[200] ?? 0).toBeGreaterThan(HTTP_RUNS / 10);
        expect(statuses[201] ?? 0).toBeGreaterThan(HTTP_RUNS / 200);
        expect((await fetch(`${city.url}/healthz`)).status).toBe(200);
      }, 120_000);

      if (part === "sockets") test(`sockets: ${WS_RUNS} generated frames: an answer in the error shape for each refusal, no write, the socket lives on`, async () => {
        const s = await TestSocket.open(city.wsUrl(`/ws/city/rooms/room_city_general?token=${tokens.good}`));
        const p = await TestSocket.open(city.wsUrl(`/ws/city/presence?token=${tokens.good}`));
        await p.next((f) => f.type === "snapshot");
        let sent = 0;
        let accepted = 0;
        try {
          await fc.assert(
            fc.asyncProperty(frameArb, fc.boolean(), async (frame, toPresence) => {
              const sock = toPresence ? p : s;
              // Read before the fingerprint: an earlier write landing while it is taken echoes after this.
              const fromRoom = s.frames.length;
              const before = await fingerprint();
              const mark = `m${sent++}`;
              const from = sock.frames.length;
              sock.send(frame);
              // A sentinel the socket must answer: every frame before it has been handled.
              sock.send({ event: "sentinel", mark });
              const answer = await sock.next((f) => f.event === "error" && f.code === "unknown_event" && f.message.includes("sentinel"), 5000, from);
              const got = sock.frames.slice(from, sock.frames.indexOf(answer));
              for (const f of got) if (f.event === "error" && !CODES.has(f.code)) throw new Error(`unknown error code ${f.code} for ${frame.slice(0, 200)}`);
              if (got.some((f) => f.event === "error" && f.code === "internal")) throw new Error(`internal error for ${frame.slice(0, 200)}`);
              const wrote = got.some((f) => f.event === "room.message" && f.message.author_user_id === "u_fuzz");
              if (!got.some((f) => f.event === "error")) accepted++;
              if (!wrote) {
                // let a write that was accepted but not yet echoed land, then compare
                // (an earlier accepted frame's commit may land now: its echo then arrives on the room socket)
                if ((await fingerprint()) !== before && !(await ackArrives(s, fromRoom))) throw new Error(`a refused frame wrote: ${frame.slice(0, 200)}`);
              }
              if (sock.closed) throw new Error(`socket closed (${sock.closed.code}) by ${frame.slice(0, 200)}`);
            }),
            { numRuns: WS_RUNS },
          );
        } finally {
          s.close();
          p.close();
        }
        expect(sent).toBe(WS_RUNS);
        console.log(`fuzz ${variant.name}: ${sent} socket frames, ${accepted} accepted without an error frame`);
        expect(accepted).toBeGreaterThan(0);
      }, 120_000);
    });
  }
}

/** The `status` of a /readyz body (`ready`, `degraded`, `not_ready`), or null when it is not one. */
function readinessStatus(text: string): string | null {
  try {
    const j = JSON.parse(text) as { status?: unknown; engines?: unknown };
    return typeof j.status === "string" && typeof j.engines === "object" ? j.status : null;
  } catch {
    return null;
  }
}

/** Waits briefly for this socket's own `room.message` echo after `from` (a write that was accepted). */
async function ackArrives(s: TestSocket, from: number): Promise<boolean> {
  try {
    await s.next((f) => f.event === "room.message" && f.message.author_user_id === "u_fuzz", 1000, from);
    return true;
  } catch {
    return false;
  }
}
