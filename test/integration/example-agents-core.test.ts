/**
 * The example Agents Core under `examples/` does what its README says: started as its own process,
 * a city pointed at it answers Second Me with its reply and shows its agents on the Living Map.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import path from "node:path";
import type { Subprocess } from "bun";
import { startTestCity, waitFor, type TestCity } from "../helpers/city.ts";

describe("the example Agents Core", () => {
  let proc: Subprocess<"ignore", "pipe", "inherit">;
  let city: TestCity;
  let url: string;

  beforeAll(async () => {
    proc = Bun.spawn(["bun", path.join(import.meta.dir, "../../examples/agents-core/server.ts")], {
      env: { ...process.env, AGENTS_CORE_PORT: "0" }, stdin: "ignore", stdout: "pipe", stderr: "inherit",
    });
    const reader = proc.stdout.getReader();
    let out = "";
    while (!/listening on (\S+)/.test(out)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the example exited: ${out}`);
      out += new TextDecoder().decode(value);
    }
    url = /listening on (\S+)/.exec(out)![1]!;
    city = await startTestCity({ AGENTS_SERVICE_URL: url, LIVING_MAP_REFRESH_MS: "1000" });
  });
  afterAll(async () => {
    await city?.dispose();
    proc?.kill();
    await proc?.exited;
  });

  test("Second Me answers with the example's reply, labelled as an example", async () => {
    const token = await city.token("u_alice");
    const res = await city.http("/secondme/invoke", { method: "POST", token, json: { prompt: "Привіт, Second Me" } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { reply: string; history: { role: string; status: string }[] };
    expect(body.reply).toContain('You said: "Привіт, Second Me"');
    expect(body.reply).toContain("example agent");
    expect(body.history.map((h) => [h.role, h.status])).toEqual([["user", "answered"], ["assistant", "answered"]]);
  });

  test("its agents reach the Living Map's agents layer", async () => {
    const token = await city.token("u_alice");
    const snap = await waitFor(
      async () => (await (await city.http("/living-map/snapshot", { token })).json()) as { layers: { agents: { items: { id: string }[] } }; meta: { sources: { name: string; status: string }[] } },
      (s) => s.layers.agents.items.length === 2,
    );
    expect(snap.layers.agents.items.map((a) => a.id).sort()).toEqual(["agent:ag_secondme_global", "agent:sofia"]);
    expect(snap.meta.sources.find((s) => s.name === "agents-service")?.status).toBe("ok");
  });
});
