import { MemoryBroker, MemoryNetwork } from "../../src/engine/broker/memory.ts";
import { brokerContract } from "./broker.contract.ts";

const network = new MemoryNetwork();
const start = async (b: MemoryBroker) => (await b.start(), b);
brokerContract("memory", {
  node: () => start(new MemoryBroker(network)),
  isolatedNode: () => start(new MemoryBroker()),
});
