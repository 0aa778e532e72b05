/** A worker entry that fails as it loads (a thread that dies: see the PostgreSQL store's commit-thread test). */
throw new Error("this worker fails on purpose");
