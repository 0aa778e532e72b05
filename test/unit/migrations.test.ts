import { describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import path from "node:path";
import { POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS } from "../../src/storage/migrations.ts";

const dir = path.join(import.meta.dir, "../../migrations");
const onDisk = (dialect: string) => readdirSync(path.join(dir, dialect)).filter((f) => f.endsWith(".sql")).map((f) => f.slice(0, -4)).sort();

describe("embedded migrations", () => {
  test("every file in migrations/<dialect>/ is embedded, in order, with its text", async () => {
    for (const [dialect, list] of [["postgres", POSTGRES_MIGRATIONS], ["sqlite", SQLITE_MIGRATIONS]] as const) {
      expect(list.map((m) => m.version)).toEqual(onDisk(dialect));
      for (const m of list) expect(m.sql).toBe(await Bun.file(path.join(dir, dialect, `${m.version}.sql`)).text());
    }
  });

  test("both dialects have the same versions", () => {
    expect(POSTGRES_MIGRATIONS.map((m) => m.version)).toEqual(SQLITE_MIGRATIONS.map((m) => m.version));
  });
});
