import { PostgresStore } from "../../src/storage/postgres.ts";
import { createTestDatabase, engineUrl } from "../helpers/engines.ts";
import { storeContract } from "./store.contract.ts";

const base = engineUrl("DATABASE_URL", "Store contract: postgres");
const db = base ? await createTestDatabase(base) : null;
storeContract(
  "postgres",
  db && {
    open: async () => new PostgresStore({ url: db.url, poolMax: 4 }),
    cleanup: () => db.drop(),
  },
);
