/**
 * The Matrix sync worker thread (design card: "the Matrix sync loop in worker threads";
 * ARCHITECTURE "Workers"): runs the `/sync` long poll and the aggregation state off the main
 * thread and posts the main thread what changed (SyncReport), one message per sync response. A
 * `beat` every second lets the main thread notice a worker that died or stalled.
 */
import { createLoop, type SyncCommand, type SyncReport } from "../modules/matrix/host.ts";
import type { MatrixSyncLoop } from "../modules/matrix/sync-loop.ts";

declare const self: Worker;

const post = (r: SyncReport) => self.postMessage(r);
let loop: MatrixSyncLoop | null = null;

self.onmessage = (e: MessageEvent) => {
  const cmd = e.data as SyncCommand;
  if (cmd.t === "start" && !loop) {
    loop = createLoop(cmd.settings, {
      onSince: (nextBatch) => post({ t: "since", nextBatch }),
      onChanges: (changes) => post({ t: "changes", changes }),
      onMapping: (rooms) => post({ t: "mapping", rooms }),
      onStatus: (status) => post({ t: "status", status }),
      log: (level, msg, fields) => post({ t: "log", level, msg, fields }),
    });
    void loop.start().catch((err) => post({ t: "log", level: "error", msg: "matrix: the sync loop threw", fields: { err: String(err) } }));
  } else if (cmd.t === "rooms") {
    loop?.setRooms(cmd.rooms);
  } else if (cmd.t === "stop") {
    void (loop?.stop() ?? Promise.resolve()).then(() => post({ t: "stopped" }));
  }
};

setInterval(() => post({ t: "beat" }), 1000);
