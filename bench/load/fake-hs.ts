/**
 * The fake homeserver as a process of its own for `bench/matrix.ts` (so its work is not counted as
 * the city's): ROOMS rooms of MEMBERS members each, all joined by the bot, and presence churn at
 * CHURN events/s (a random member flips online/offline), sent in batches every 10 ms. Prints
 * `{"msg":"listening","url":…}` and runs until killed.
 */
import { FakeHomeserver } from "../../test/helpers/fake-homeserver.ts";

const rooms = Number(process.env.ROOMS ?? 10);
const members = Number(process.env.MEMBERS ?? 1000);
const churn = Number(process.env.CHURN ?? 1000);
const hs = new FakeHomeserver("bench").start();
hs.addUser("@bot:bench", { token: "bench-token" });
const users: string[] = [];
for (let r = 0; r < rooms; r++) {
  const id = `!r${r}:bench`;
  hs.createRoom(id, `#city_r${r}:bench`);
  hs.join(id, "@bot:bench");
  for (let m = 0; m < members; m++) {
    const u = `@m${r}_${m}:bench`;
    hs.join(id, u);
    users.push(u);
  }
}
const online = new Set<string>();
let carry = 0;
setInterval(() => {
  carry += churn / 100;
  for (; carry >= 1; carry--) {
    const u = users[Math.floor(Math.random() * users.length)]!;
    if (online.delete(u)) hs.setPresence(u, "offline");
    else {
      online.add(u);
      hs.setPresence(u, "online");
    }
  }
}, 10);
console.log(JSON.stringify({ msg: "listening", url: hs.url }));
