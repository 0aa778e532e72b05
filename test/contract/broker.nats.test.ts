import { NatsBroker } from "../../src/engine/broker/nats.ts";
import { silentLogger } from "../../src/log.ts";
import { engineUrl, randomSuffix } from "../helpers/engines.ts";
import { brokerContract } from "./broker.contract.ts";

const url = engineUrl("NATS_URL", "Broker contract: nats");
// Inbound subscriptions in the bus worker thread (the default) and on the main thread.
for (const busWorker of [true, false]) {
  const prefix = `t_${randomSuffix()}`;
  const start = async (subjectPrefix: string) => {
    const b = new NatsBroker({ url: url!, subjectPrefix, log: silentLogger, busWorker });
    await b.start();
    return b;
  };
  brokerContract(
    `nats (${busWorker ? "bus worker" : "main thread"})`,
    url ? { node: () => start(prefix), isolatedNode: () => start(`${prefix}_other`) } : null,
  );
}
