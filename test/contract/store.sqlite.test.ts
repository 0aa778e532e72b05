import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { SqliteStore } from "../../src/storage/sqlite.ts";
import { storeContract } from "./store.contract.ts";

const dir = mkdtempSync(path.join(tmpdir(), "dc-store-"));
storeContract("sqlite", {
  open: async () => new SqliteStore({ file: path.join(dir, "city.sqlite") }),
  cleanup: async () => rmSync(dir, { recursive: true, force: true }),
});
