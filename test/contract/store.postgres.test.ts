import postgres from "postgres";
import { POSTGRES_MIGRATIONS } from "../../src/storage/migrations.ts";
import { PostgresStore } from "../../src/storage/postgres.ts";
import { createTestSchema, engineUrl } from "../helpers/engines.ts";
import { storeContract } from "./store.contract.ts";

const base = engineUrl("DATABASE_URL", "Store contract: postgres");
storeContract(
  "postgres",
  base === null ? null : {
    database: async () => {
      const db = await createTestSchema(base);
      return {
        open: async (o) =>
          new PostgresStore({ url: db.url, poolMax: 4, migrations: o?.migrations === "before-seq" ? POSTGRES_MIGRATIONS.filter((m) => m.version < "0003") : undefined }),
        raw: async (sql) => {
          const c = postgres(db.url, { max: 1, onnotice: () => {} });
          try {
            await c.unsafe(sql);
          } finally {
            await c.end();
          }
        },
        drop: db.drop,
      };
    },
  },
);
