import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { SQLITE_MIGRATIONS } from "../../src/storage/migrations.ts";
import { SqliteStore } from "../../src/storage/sqlite.ts";
import { expect, test } from "bun:test";
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

test("SqliteStore: opening a file another process has locked waits for the lock instead of failing", async () => {
  // Both of the store's connections (the main one and the writer thread's) set their pragmas on
  // open; another process holds the file for 300 ms, so it is busy for both.
  const dir = mkdtempSync(path.join(tmpdir(), "dc-store-busy-"));
  const file = path.join(dir, "city.sqlite");
  const holder = Bun.spawn(
    ["bun", "-e", `const { Database } = require("bun:sqlite"); const db = new Database(${JSON.stringify(file)}, { create: true });
      db.exec("BEGIN EXCLUSIVE"); db.exec("CREATE TABLE holder (x)"); console.log("locked");
      setTimeout(() => { db.exec("COMMIT"); db.close(); }, 300);`],
    { stdout: "pipe", stderr: "inherit" },
  );
  let store: SqliteStore | null = null;
  try {
    const reader = holder.stdout.getReader();
    let out = "";
    while (!out.includes("locked")) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the lock holder exited before locking");
      out += new TextDecoder().decode(value);
    }
    store = new SqliteStore({ file });
    await store.migrate();
    await store.probeWrite();
    expect(await store.listRooms({ limit: 1, offset: 0 })).toEqual([]);
  } finally {
    await holder.exited;
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
