// The Socket.IO Admin UI protocol against a fanout cluster: the official socket.io-client plays
// the UI (what @socket.io/admin-ui 0.5.1's UI does on the wire) against node A, while chat
// sockets live on nodes B and C.
//
// Environment:
//   URLS         comma-separated base URLs of the nodes, node A first
//   NODE_IDS     comma-separated node ids, same order
//   URL_OFF      base URL of a node without the Admin UI (its /admin must not exist)
//   ADMIN_USER, ADMIN_PASSWORD   the Admin UI credentials
//   TOKEN_ALICE, TOKEN_BOB, TOKEN_CAROL   chat JWTs
//   CHAT         a chat of alice, bob and carol
//
// Exits 0 and prints one JSON summary line on success; exits 1 naming the failed step.

import { io } from "socket.io-client";

import { checks } from "./steps.mjs";

const { env, fail, step, current, during } = checks("admin", { stepMs: 10_000, overallMs: 90_000 });

const URLS = env("URLS").split(",");
const NODE_IDS = env("NODE_IDS").split(",");
const URL_OFF = env("URL_OFF");
const USER = env("ADMIN_USER");
const PASSWORD = env("ADMIN_PASSWORD");
const [A, B, C] = URLS;

const opts = (extra) => ({ transports: ["websocket"], forceNew: true, reconnection: false, ...extra });

function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  });
}

function refused(socket) {
  return new Promise((resolve, reject) => {
    socket.once("connect", () => reject(new Error("connected, expected a refusal")));
    socket.once("connect_error", (e) => resolve(e.message));
  });
}

/** Resolves with the arguments of the first `event` that satisfies `pred`. */
function waitFor(socket, event, pred = () => true) {
  return new Promise((resolve) => {
    const on = (...args) => {
      if (pred(...args)) {
        socket.off(event, on);
        resolve(args);
      }
    };
    socket.on(event, on);
  });
}

const chat = (url, token) => connected(io(url, opts({ auth: { token } })));
const summary = {};

// Chat sockets on nodes B and C.
const alice = await step("chat sockets connect", () => chat(B, env("TOKEN_ALICE")));
const bob = await step("chat sockets connect", () => chat(C, env("TOKEN_BOB")));

await step("no /admin without the settings", async () => {
  const s = io(`${URL_OFF}/admin`, opts({ auth: { username: USER, password: PASSWORD } }));
  const msg = await refused(s);
  if (!/invalid namespace/i.test(msg)) throw new Error(`refusal ${JSON.stringify(msg)}`);
  s.close();
});

await step("bad password refused", async () => {
  const s = io(`${A}/admin`, opts({ auth: { username: USER, password: "wrong" } }));
  const msg = await refused(s);
  if (msg !== "invalid credentials") throw new Error(`refusal ${JSON.stringify(msg)}`);
  s.close();
  const t = io(`${A}/admin`, opts({ auth: { token: env("TOKEN_ALICE") } }));
  const msg2 = await refused(t);
  if (msg2 !== "invalid credentials") throw new Error(`a chat token: ${JSON.stringify(msg2)}`);
  t.close();
});

// The UI: registers its listeners before the connect, as the real UI does.
const admin = io(`${A}/admin`, opts({ auth: { username: USER, password: PASSWORD } }));
const gotSession = waitFor(admin, "session");
const gotConfig = waitFor(admin, "config");
const gotSockets = waitFor(admin, "all_sockets");
const stats = new Map();
admin.on("server_stats", (s) => stats.set(s.serverId, s));
// The namespaces are apart: nothing of the chat app reaches an admin socket.
admin.onAny((event) => {
  if (/^(chat|presence|session):/.test(event)) fail(current(), `/admin got ${event}`);
});

await step("login accepted", () => connected(admin));
const [sessionId] = await step("session issued", () => gotSession);
const [config] = await step("config", () => gotConfig);
for (const f of ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS", "ALL_EVENTS"]) {
  if (!config.supportedFeatures.includes(f)) fail("config", `no ${f} in ${JSON.stringify(config)}`);
}

await step("all_sockets lists the sockets of every node", async () => {
  const [list] = await gotSockets;
  const ids = list.map((s) => s.id);
  for (const [who, s] of [["alice", alice], ["bob", bob]]) {
    const found = list.find((x) => x.id === s.id);
    if (!found) throw new Error(`${who} (${s.id}) missing from ${JSON.stringify(ids)}`);
    if (found.data.userId !== who) throw new Error(`${who}'s data: ${JSON.stringify(found.data)}`);
    if (found.nsp !== "/") throw new Error(`nsp ${found.nsp}`);
    const text = JSON.stringify(found);
    if (/authorization|cookie|token/i.test(text)) throw new Error(`credentials shown: ${text}`);
    if (!found.rooms.includes(`user:${who}`)) throw new Error(`rooms ${found.rooms}`);
  }
  summary.allSockets = list.length;
});

await step("server_stats from every node", async () => {
  while (!NODE_IDS.every((id) => stats.has(id))) await new Promise((r) => setTimeout(r, 100));
  for (const id of NODE_IDS) {
    const s = stats.get(id);
    for (const k of ["hostname", "pid", "uptime", "clientsCount", "pollingClientsCount", "aggregatedEvents", "namespaces"]) {
      if (!(k in s)) throw new Error(`${id}'s stats lack ${k}: ${JSON.stringify(s)}`);
    }
  }
  summary.servers = [...stats.keys()];
}, 8_000);

const carol = await step("socket_connected from another node", async () => {
  const seen = waitFor(admin, "socket_connected", (s) => s.data?.userId === "carol");
  const c = await chat(C, env("TOKEN_CAROL"));
  const [s, date] = await seen;
  if (s.id !== c.id || !date) throw new Error(`socket_connected ${JSON.stringify(s)} ${date}`);
  return c;
});

await step("event_received from another node", async () => {
  // Node B shows payloads (ADMIN_UI_SHOW_EVENTS=true), node C does not (the default).
  const seen = waitFor(admin, "event_received", (nsp, id) => id === alice.id);
  alice.emit("presence:query", { userIds: ["bob"] }, () => {});
  const [nsp, , args] = await seen;
  if (nsp !== "/" || args[0] !== "presence:query" || args[1]?.userIds?.[0] !== "bob") {
    throw new Error(`${nsp} ${JSON.stringify(args)}`);
  }
  const hidden = waitFor(admin, "event_received", (nsp, id) => id === carol.id);
  carol.emit("presence:query", { userIds: ["bob"] }, () => {});
  const [, , args2] = await hidden;
  if (JSON.stringify(args2) !== '["presence:query"]') throw new Error(`shown: ${JSON.stringify(args2)}`);
});

await step("a chat message and presence do not reach /admin; its deliveries are event_sent", async () => {
  const got = new Promise((resolve) => bob.once("chat:message", resolve));
  // bob's node C hides payloads, alice's node B shows them.
  const sentBob = waitFor(admin, "event_sent", (nsp, id, args) => id === bob.id && args[0] === "chat:message");
  const sentAlice = waitFor(admin, "event_sent", (nsp, id, args) => id === alice.id && args[0] === "chat:message");
  const ack = await alice.emitWithAck("chat:send", { chatId: env("CHAT"), content: "hi bob" });
  if (!ack.success) throw new Error(JSON.stringify(ack));
  await got;
  const [, , toBob] = await sentBob;
  if (JSON.stringify(toBob) !== '["chat:message"]') throw new Error(`shown: ${JSON.stringify(toBob)}`);
  const [, , toAlice] = await sentAlice;
  if (toAlice[1]?.content !== "hi bob") throw new Error(`payload: ${JSON.stringify(toAlice)}`);
  // Give a stray delivery to /admin time to arrive (onAny above fails the run if one does).
  await new Promise((r) => setTimeout(r, 300));
});

await step("socket_updated when a polling socket upgrades", async () => {
  const updates = [];
  const on = (u) => updates.push(u);
  admin.on("socket_updated", on);
  // Polling first, then the client's upgrade: the node reports it at its next stats tick.
  const dave = await connected(
    io(C, { forceNew: true, reconnection: false, transports: ["polling", "websocket"], auth: { token: env("TOKEN_CAROL") } }),
  );
  const deadline = Date.now() + 12_000;
  while (!updates.some((u) => u.id === dave.id && u.nsp === "/" && u.transport === "websocket")) {
    if (Date.now() > deadline) throw new Error(`no socket_updated for ${dave.id}: ${JSON.stringify(updates)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  admin.off("socket_updated", on);
  dave.disconnect();
}, 15_000);

await step("join makes a socket on another node join a room", async () => {
  const joined = waitFor(admin, "room_joined", (nsp, room, id) => room === "admin-room" && id === alice.id);
  admin.emit("join", "/", "admin-room", alice.id);
  await joined;
  const got = waitFor(alice, "admin-hello");
  admin.emit("emit", "/", "admin-room", "admin-hello", { n: 1 }, "two");
  const [first, second] = await got;
  if (first?.n !== 1 || second !== "two") throw new Error(`args ${JSON.stringify([first, second])}`);
});

await step("_disconnect through node A disconnects a socket on node C", async () => {
  const reason = new Promise((r) => bob.once("disconnect", r));
  // The client forgets its id once disconnected.
  const bobId = bob.id;
  const seen = waitFor(admin, "socket_disconnected", (nsp, id) => id === bobId);
  admin.emit("_disconnect", "/", false, bobId);
  const why = await reason;
  if (why !== "io server disconnect") throw new Error(`bob's reason ${why}`);
  during("socket_disconnected reaches the UI");
  await seen;
  if (!carol.connected || !alice.connected) throw new Error("another socket was disconnected");
});

await step("the session id logs in on another node", async () => {
  const again = io(`${B}/admin`, opts({ auth: { sessionId } }));
  const cfg = waitFor(again, "config");
  await connected(again);
  await cfg;
  again.close();
  const bad = io(`${B}/admin`, opts({ auth: { sessionId: "not-a-session" } }));
  const msg = await refused(bad);
  if (msg !== "invalid credentials") throw new Error(msg);
  bad.close();
});

for (const s of [admin, alice, carol]) s.close();
console.log(JSON.stringify({ ok: true, ...summary }));
process.exit(0);
