/**
 * A minimal WebSocket client on a raw TCP socket, for load generation only: the upgrade handshake,
 * then pre-encoded client frames written as they are (masked with a zero key, which RFC 6455
 * allows: the server XORs with zeros), and whatever the server sends read and thrown away after
 * its first frame. Bun's WebSocket client costs ~20 µs of CPU per send, which on two cores left the
 * heartbeat bench unable to offer more than ~50,000 frames/s; a write here is one syscall.
 */

/** An open raw socket: `send` writes a frame made by {@link encodeClientFrame}. */
export interface RawWs {
  send(frame: Uint8Array): boolean;
  close(): void;
}

/** A masked (zero key) text frame for `text`, ready to write any number of times. */
export function encodeClientFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const len = payload.length;
  const head = len < 126 ? 2 : len < 65536 ? 4 : 10;
  const out = new Uint8Array(head + 4 + len);
  out[0] = 0x81; // FIN, text
  if (len < 126) out[1] = 0x80 | len;
  else if (len < 65536) {
    out[1] = 0x80 | 126;
    out[2] = len >> 8;
    out[3] = len & 0xff;
  } else throw new Error("raw-ws: frames over 64 KiB are not needed here");
  // mask key: four zero bytes (already zero), then the payload as it is
  out.set(payload, head + 4);
  return out;
}

/**
 * Connects to `url` (ws://host:port/path?query) and resolves once the upgrade succeeded and the
 * first server frame arrived (for the presence socket, its snapshot: the socket is subscribed).
 * Resolves `null` on a refused upgrade, an error or 20 s without it.
 */
export function openRawWs(url: string): Promise<RawWs | null> {
  const u = new URL(url);
  return new Promise((resolve) => {
    let state: "handshake" | "waiting" | "open" = "handshake";
    let head = "";
    let done = false;
    const finish = (v: RawWs | null) => {
      if (!done) {
        done = true;
        resolve(v);
      }
    };
    let pending: Uint8Array | null = null;
    const timer = setTimeout(() => finish(null), 20_000);
    Bun.connect({
      hostname: u.hostname,
      port: Number(u.port),
      socket: {
        open(sock) {
          const key = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64");
          sock.write(`GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
        },
        data(sock, chunk) {
          if (state === "open") return;
          if (state === "handshake") {
            head += chunk.toString("latin1");
            const end = head.indexOf("\r\n\r\n");
            if (end < 0) return;
            if (!head.startsWith("HTTP/1.1 101")) {
              sock.end();
              clearTimeout(timer);
              return finish(null);
            }
            state = "waiting";
            if (head.length === end + 4) return; // the first frame has not come yet
          }
          state = "open";
          clearTimeout(timer);
          finish({
            send(frame) {
              if (pending) return false; // the kernel buffer is full: this beat is not sent
              const n = sock.write(frame);
              if (n < frame.length) pending = frame.subarray(Math.max(0, n));
              return n > 0;
            },
            close() {
              // a close frame (masked, zero key, no payload), then the end
              sock.write(new Uint8Array([0x88, 0x80, 0, 0, 0, 0]));
              sock.end();
            },
          });
        },
        drain(sock) {
          if (!pending) return;
          const n = sock.write(pending);
          pending = n < pending.length ? pending.subarray(Math.max(0, n)) : null;
        },
        close() {
          clearTimeout(timer);
          finish(null);
        },
        error() {
          clearTimeout(timer);
          finish(null);
        },
      },
    }).catch(() => {
      clearTimeout(timer);
      finish(null);
    });
  });
}
