import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import postgres from "postgres";
import { POSTGRES_MIGRATIONS } from "../../src/storage/migrations.ts";
import { PostgresStore, type PostgresStoreOptions } from "../../src/storage/postgres.ts";
import { waitFor } from "../helpers/city.ts";
import { createTestSchema, engineUrl } from "../helpers/engines.ts";
import { message, room, storeContract, writes } from "./store.contract.ts";

const base = engineUrl("DATABASE_URL", "Store contract: postgres");
// Both places an append can commit (POSTGRES_COMMIT): the pool, and the commit thread the caller waits for.
for (const commit of ["pool", "caller"] as const satisfies PostgresStoreOptions["commit"][]) {
  storeContract(
    commit === "pool" ? "postgres" : "postgres, commit on the caller",
    base === null ? null : {
      database: async () => {
        const db = await createTestSchema(base);
        return {
          open: async (o) =>
            new PostgresStore({
              url: db.url, poolMax: 4, commit,
              migrations: o?.migrations === "before-seq" ? POSTGRES_MIGRATIONS.filter((m) => m.version < "0003") : undefined,
            }),
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
}

describe.skipIf(base === null)("PostgresStore, commit on the caller: a commit that has to wait", () => {
  let db: { url: string; drop: () => Promise<void> };
  let store: PostgresStore;
  let locker: postgres.Sql;
  beforeAll(async () => {
    db = await createTestSchema(base!);
    store = new PostgresStore({ url: db.url, poolMax: 2, commit: "caller", callerWaitMs: 20 });
    await store.migrate();
    locker = postgres(db.url, { max: 1, onnotice: () => {} });
  });
  afterAll(async () => {
    await locker?.end();
    await store?.close();
    await db?.drop();
  });

  test("is answered when it commits, the event loop running meanwhile, and another room's append does not queue behind it", async () => {
    const suffix = Math.random().toString(36).slice(2, 8);
    const [held, free] = [room(`held_${suffix}`), room(`free_${suffix}`)];
    for (const r of [held, free]) await store.createRoom(r, { messages: [], events: [] });
    // Another transaction holds one room's row lock: no append of that room can commit until it ends.
    const lock = await locker.reserve();
    await lock`begin`;
    await lock`select 1 from city_rooms where id = ${held.id} for update`;
    let heldSeq: number | null = null;
    const first = store.appendMessages(held.id, writes([message(held.id, "waits")]));
    void first.then((s) => (heldSeq = s));
    expect(store.commitsOnCaller).toBe(true);
    // Committed while the first still waits for the lock: it did not queue behind it.
    expect(await store.appendMessages(free.id, writes([message(free.id, "goes by")]))).toBe(1);
    expect(heldSeq).toBeNull();
    // The loop was free all along: this connection's commit, which ends the lock, runs on it.
    await lock`commit`;
    lock.release();
    expect(await first).toBe(1);
    for (const [r, body] of [[held, "waits"], [free, "goes by"]] as const) {
      expect((await store.listMessages(r.id, { limit: 10 })).map((m) => [m.seq, m.body])).toEqual([[1, body]]);
    }
  });
});

describe.skipIf(base === null)("PostgresStore, commit on the caller: a commit thread that fails", () => {
  test("leaves the appends to the pool from then on, and says so once", async () => {
    const db = await createTestSchema(base!);
    const failures: string[] = [];
    const store = new PostgresStore({
      url: db.url, poolMax: 2, commit: "caller", commitThreadEntry: new URL("../helpers/failing.worker.ts", import.meta.url).href,
      onCommitThreadFailed: (why) => failures.push(why),
    });
    try {
      await store.migrate();
      const r = room(`failed_${Math.random().toString(36).slice(2, 8)}`);
      await store.createRoom(r, { messages: [], events: [] });
      await waitFor(() => failures.length, (n) => n > 0, 5000);
      expect(store.commitsOnCaller).toBe(false);
      expect(await store.appendMessages(r.id, writes([message(r.id, "via the pool")]))).toBe(1);
      expect(await store.appendMessagesMany([{ roomId: r.id, batch: writes([message(r.id, "and again")]) }])).toEqual([2]);
      expect((await store.listMessages(r.id, { limit: 10 })).map((m) => m.body)).toEqual(["via the pool", "and again"]);
      expect(failures).toEqual([expect.stringContaining("message appends go through the pool from now on")]);
    } finally {
      await store.close();
      await db.drop();
    }
  });
});
