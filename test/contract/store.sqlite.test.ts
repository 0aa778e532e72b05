import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { SQLITE_MIGRATIONS } from "../../src/storage/migrations.ts";
import { SqliteStore } from "../../src/storage/sqlite.ts";
import { storeContract } from "./store.contract.ts";

storeContract("sqlite", {
  database: async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "dc-store-"));
    const file = path.join(dir, "city.sqlite");
    return {
      open: async (o) => new SqliteStore({ file, migrations: o?.migrations === "before-seq" ? SQLITE_MIGRATIONS.filter((m) => m.version < "0003") : undefined }),
      raw: async (sql) => {
        const db = new Database(file);
        try {
          db.exec(sql);
        } finally {
          db.close();
        }
      },
      drop: async () => rmSync(dir, { recursive: true, force: true }),
    };
  },
});
