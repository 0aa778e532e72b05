/**
 * The bus worker thread (design card: "NATS subscribers … in worker threads"; ARCHITECTURE
 * "Workers"): owns every inbound NATS subscription of the instance through a {@link BusCore} and
 * posts what arrives to the main thread in batches. Commands and events are BusCommand / BusEvent;
 * a `beat` every second lets the main thread notice a worker that died or stalled.
 */
import { BusCore, type BusCommand, type BusEvent } from "../engine/broker/bus-core.ts";

declare const self: Worker;

const core = new BusCore((e: BusEvent) => self.postMessage(e));
let chain: Promise<void> = Promise.resolve();

self.onmessage = (e: MessageEvent) => {
  const cmd = e.data as BusCommand;
  // In order: a `sub` sent right after `open` waits for the connection.
  chain = chain.then(() => core.handle(cmd)).catch(() => {});
};

setInterval(() => self.postMessage({ t: "beat" } satisfies BusEvent), 1000);
