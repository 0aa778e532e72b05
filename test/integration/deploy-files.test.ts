/**
 * The files a newcomer deploys with stay true to the server: the Grafana dashboard queries only
 * metrics `/metrics` has, docker-compose sets only settings the server reads, and the Dockerfile
 * builds with the package's own build script (workers, page and OpenAPI UI included).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import path from "node:path";
import { configTable } from "../../src/config.ts";
import { startTestCity, type TestCity } from "../helpers/city.ts";

const root = path.join(import.meta.dir, "../..");

describe("deploy files", () => {
  let city: TestCity;
  beforeAll(async () => {
    city = await startTestCity();
  });
  afterAll(async () => {
    await city?.dispose();
  });

  test("every metric the Grafana dashboard queries is served by /metrics", async () => {
    const dashboard = (await Bun.file(path.join(root, "docs/grafana/daarion-city.json")).json()) as { panels: { title: string; targets: { expr: string }[] }[] };
    const text = await (await city.http("/metrics")).text();
    const served = new Set([...text.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]!));
    // a histogram family is queried through its series: <name>_bucket, _sum and _count
    for (const [, name] of text.matchAll(/^# TYPE (\S+) histogram$/gm)) for (const suffix of ["_bucket", "_sum", "_count"]) served.add(name + suffix);
    const queried = new Set(dashboard.panels.flatMap((p) => p.targets.flatMap((t) => [...t.expr.matchAll(/\b(daarion_city_[a-z0-9_]+)/g)].map((m) => m[1]!))));
    expect(dashboard.panels.length).toBeGreaterThan(5);
    expect([...queried].filter((m) => !served.has(m))).toEqual([]);
  });

  test("docker-compose sets only settings the server reads; the Dockerfile uses the package's build", async () => {
    const compose = Bun.YAML.parse(await Bun.file(path.join(root, "docker-compose.yml")).text()) as { services: Record<string, { environment?: Record<string, string> }> };
    const known = new Set(configTable().map((c) => c.env));
    const set = Object.keys(compose.services.city!.environment!);
    expect(set.filter((k) => !known.has(k))).toEqual([]);
    expect(set).toEqual(expect.arrayContaining(["DATABASE_URL", "REDIS_URL", "NATS_URL", "JWT_SECRET"]));
    const dockerfile = await Bun.file(path.join(root, "Dockerfile")).text();
    expect(dockerfile).toContain("RUN bun run build");
    expect(dockerfile).toContain('CMD ["/usr/local/bin/daarion-city", "healthcheck"]');
  });
});
