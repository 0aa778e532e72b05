/**
 * The migrations, embedded in the binary as text (`bun build --compile` bundles these imports),
 * so `daarion-city migrate` works from any working directory. Add a file to
 * `migrations/<dialect>/` and list it here; `test/unit/migrations.test.ts` fails when the two differ.
 */
import pg0001 from "../../migrations/postgres/0001_city.sql" with { type: "text" };
import pg0002 from "../../migrations/postgres/0002_secondme_status.sql" with { type: "text" };
import pg0003 from "../../migrations/postgres/0003_room_seq.sql" with { type: "text" };
import pg0004 from "../../migrations/postgres/0004_health.sql" with { type: "text" };
import pg0005 from "../../migrations/postgres/0005_living_map.sql" with { type: "text" };
import pg0006 from "../../migrations/postgres/0006_matrix.sql" with { type: "text" };
import lite0001 from "../../migrations/sqlite/0001_city.sql" with { type: "text" };
import lite0002 from "../../migrations/sqlite/0002_secondme_status.sql" with { type: "text" };
import lite0003 from "../../migrations/sqlite/0003_room_seq.sql" with { type: "text" };
import lite0004 from "../../migrations/sqlite/0004_health.sql" with { type: "text" };
import lite0005 from "../../migrations/sqlite/0005_living_map.sql" with { type: "text" };
import lite0006 from "../../migrations/sqlite/0006_matrix.sql" with { type: "text" };

/** One migration: `version` is the file name without `.sql` (e.g. `0001_city`); applied in version order. */
export interface Migration {
  version: string;
  sql: string;
}

export const POSTGRES_MIGRATIONS: Migration[] = [
  { version: "0001_city", sql: pg0001 },
  { version: "0002_secondme_status", sql: pg0002 },
  { version: "0003_room_seq", sql: pg0003 },
  { version: "0004_health", sql: pg0004 },
  { version: "0005_living_map", sql: pg0005 },
  { version: "0006_matrix", sql: pg0006 },
];
export const SQLITE_MIGRATIONS: Migration[] = [
  { version: "0001_city", sql: lite0001 },
  { version: "0002_secondme_status", sql: lite0002 },
  { version: "0003_room_seq", sql: lite0003 },
  { version: "0004_health", sql: lite0004 },
  { version: "0005_living_map", sql: lite0005 },
  { version: "0006_matrix", sql: lite0006 },
];

/** A short, stable fingerprint of a migration's text, recorded when applied to detect later edits. */
export function checksum(sql: string): string {
  return new Bun.CryptoHasher("sha256").update(sql).digest("hex").slice(0, 16);
}
