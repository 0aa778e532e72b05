// Socket.IO on Node.js, websocket transport only: what users would usually pick for rooms.
// "join" puts the socket in a room; "room.message.send" is emitted to the room (sender included).
import { createServer } from "node:http";
import { Server } from "socket.io";

const http = createServer();
const io = new Server(http, { transports: ["websocket"], perMessageDeflate: false, serveClient: false, cors: { origin: "*" } });
io.on("connection", (socket) => {
  socket.on("join", (room) => socket.join(room));
  socket.on("room.message.send", (m) => io.to(m.room_id).emit("room.message", m));
});
http.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  console.log(JSON.stringify({ msg: "listening", url: `http://127.0.0.1:${http.address().port}` }));
});
