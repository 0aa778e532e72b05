/**
 * The ceiling: the thinnest Bun.serve pub/sub room server. No auth, no store, no validation:
 * a socket on /ws/city/rooms/<room> is subscribed to <room>, and every text frame it sends is
 * published verbatim to <room> (the sender included, like the project's acknowledgement echo).
 */
const server = Bun.serve<{ room: string }>({
  hostname: "127.0.0.1",
  port: Number(process.env.PORT ?? 0),
  fetch(req, srv) {
    const path = new URL(req.url).pathname;
    const room = path.slice(path.lastIndexOf("/") + 1);
    return srv.upgrade(req, { data: { room } }) ? undefined : new Response("upgrade required", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    idleTimeout: 120,
    open(ws) {
      ws.subscribe(ws.data.room);
    },
    message(ws, msg) {
      server.publish(ws.data.room, msg, false);
    },
  },
});
console.log(JSON.stringify({ msg: "listening", url: `http://127.0.0.1:${server.port}` }));
