/**
 * The ceiling for the living-map stream: the thinnest NATS-to-WebSocket bridge in Bun. No auth,
 * no scene, no history, no worker: one core NATS subscription per living-map subject on the main
 * thread, and each message wrapped in the seed 004 §4.6 event frame (same fields, same id length
 * as the project's) and published verbatim on one Bun topic that every socket subscribes to.
 *
 *   NATS_URL=… NATS_SUBJECT_PREFIX=… bun bench/peers/bun-raw-nats.ts
 */
import { connect } from "nats";

const SUBJECTS = ["city.event.*", "dao.event.*", "microdao.event.*", "node.metrics.*", "agent.event.*", "usage.llm.*", "usage.agent.*", "messaging.message.created"];
const prefix = process.env.NATS_SUBJECT_PREFIX ? `${process.env.NATS_SUBJECT_PREFIX}.` : "";
const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  fetch(req, srv) {
    return srv.upgrade(req) ? undefined : new Response("upgrade required", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    idleTimeout: 120,
    open(ws) {
      ws.send('{"kind":"snapshot"}');
      ws.subscribe("living-map");
    },
    message() {},
  },
});

let n = 0;
for (const s of SUBJECTS) {
  const sub = nc.subscribe(prefix + s);
  void (async () => {
    for await (const m of sub) {
      const id = `00000000-0000-8000-8000-${(n++).toString(16).padStart(12, "0")}`;
      server.publish(
        "living-map",
        `{"kind":"event","id":"${id}","event_type":"${m.subject.slice(prefix.length)}","timestamp":"${new Date().toISOString()}","payload":${m.string()}}`,
        false,
      );
    }
  })();
}
await nc.flush();
console.log(JSON.stringify({ msg: "listening", url: `http://127.0.0.1:${server.port}` }));
