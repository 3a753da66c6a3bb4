// Real, varied traffic for the dashboard snapshot, next to fanout-bench's steady load:
// users who come and go (connects, disconnects, presence online/offline), over both
// transports (websocket and long-polling), sending chat messages at a steady pace with the
// official socket.io-client, plus the things that fill the "refusals and errors" panels:
// handshakes with a missing, forged or expired token, chat:send to a chat the user is not
// a member of (FORBIDDEN), a malformed chat:send (INVALID_PAYLOAD), and clientMsgId retries
// (deduplicated).
//
// Environment (what `source .run/env` of `make up` sets, plus knobs):
//   FANOUT_URL        the load balancer, e.g. http://127.0.0.1:8080
//   FANOUT_ADMIN_URL  one node's internal API, e.g. http://127.0.0.1:9101
//   API_KEY, JWT_SECRET
//   DURATION [120]    seconds; the script stops by itself (hard stop DURATION + 20 s)
//   USERS [24]        users who connect and disconnect in a loop
//   CHATS [4]         chats they are members of (each user in one or two)
//   RUN_ID [random]   prefix of the chat and user ids
//
// Only loopback URLs are accepted. Prints one JSON summary line at the end.

import { createHmac, randomBytes } from "node:crypto";
import { io } from "socket.io-client";

const env = (name, dflt) => {
  const v = process.env[name] ?? dflt;
  if (v === undefined || v === "") {
    console.error(`traffic: environment variable ${name} is not set (source .run/env)`);
    process.exit(2);
  }
  return v;
};

const URL = env("FANOUT_URL");
const ADMIN_URL = env("FANOUT_ADMIN_URL");
const API_KEY = env("API_KEY");
const JWT_SECRET = env("JWT_SECRET");
const DURATION = Number(env("DURATION", "120"));
const USERS = Number(env("USERS", "24"));
const CHATS = Number(env("CHATS", "4"));
const RUN_ID = env("RUN_ID", randomBytes(3).toString("hex"));

for (const u of [URL, ADMIN_URL]) {
  const host = new globalThis.URL(u).hostname;
  if (!(host === "localhost" || host === "[::1]" || host.startsWith("127."))) {
    console.error(`traffic: ${u} is not a loopback URL; refusing`);
    process.exit(2);
  }
}

const deadline = Date.now() + DURATION * 1000;
setTimeout(() => {
  console.error("traffic: hard stop");
  process.exit(1);
}, (DURATION + 20) * 1000).unref();

const stats = {
  connects: 0,
  connectErrors: 0,
  refusedAsExpected: 0,
  disconnects: 0,
  sent: 0,
  acked: 0,
  ackErrors: {},
  received: 0,
  retries: 0,
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rand = (lo, hi) => lo + Math.random() * (hi - lo);
const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** HS256 JWT, the claims fanout-token mints (sub, exp). */
function token(sub, { secret = JWT_SECRET, ttlSecs = 3600 } = {}) {
  const header = b64url(JSON.stringify({ typ: "JWT", alg: "HS256" }));
  const payload = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + ttlSecs }));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

async function api(method, path, body) {
  const res = await fetch(`${ADMIN_URL}${path}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${await res.text()}`);
  return res.status === 204 ? null : res.json().catch(() => null);
}

const users = Array.from({ length: USERS }, (_, i) => `snap-${RUN_ID}-u${i}`);
const chats = Array.from({ length: CHATS }, (_, c) => `snap-${RUN_ID}-c${c}`);
// User i is in chat i % CHATS, and every third user also in the next one.
const chatsOf = (i) => (i % 3 === 0 ? [chats[i % CHATS], chats[(i + 1) % CHATS]] : [chats[i % CHATS]]);
const outsider = `snap-${RUN_ID}-closed`; // a chat none of them is in

function connect(auth, transport) {
  return new Promise((resolve, reject) => {
    const s = io(URL, { auth, transports: [transport], reconnection: false, forceNew: true, timeout: 10_000 });
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => {
      s.close();
      reject(e);
    });
  });
}

async function send(s, chatId, content, clientMsgId) {
  stats.sent++;
  try {
    const ack = await s.timeout(10_000).emitWithAck("chat:send", { chatId, content, clientMsgId });
    if (ack?.success) stats.acked++;
    else {
      const code = ack?.error?.code ?? ack?.code ?? "unknown";
      stats.ackErrors[code] = (stats.ackErrors[code] ?? 0) + 1;
    }
    return ack;
  } catch {
    stats.ackErrors.timeout = (stats.ackErrors.timeout ?? 0) + 1;
    return null;
  }
}

/** One user: connect, chat for a while, leave, come back; until the deadline. */
async function userLoop(i) {
  const sub = users[i];
  const mine = chatsOf(i);
  let n = 0;
  await sleep(rand(0, 4000)); // spread the first connects
  while (Date.now() < deadline) {
    const transport = i % 3 === 1 ? "polling" : "websocket";
    let s;
    try {
      s = await connect({ token: token(sub) }, transport);
      stats.connects++;
    } catch {
      stats.connectErrors++;
      await sleep(2000);
      continue;
    }
    s.on("chat:message", () => stats.received++);
    const stayUntil = Math.min(deadline, Date.now() + rand(8_000, 25_000));
    while (Date.now() < stayUntil && s.connected) {
      const chatId = mine[n % mine.length];
      const clientMsgId = `${sub}-${n++}`;
      await send(s, chatId, `hello #${n} from ${sub}`, clientMsgId);
      if (Math.random() < 0.05) {
        stats.retries++;
        await send(s, chatId, `hello #${n} from ${sub}`, clientMsgId); // a retry: deduplicated
      }
      await sleep(rand(700, 1500));
    }
    s.close();
    stats.disconnects++;
    await sleep(rand(1000, 4000));
  }
}

/** Handshakes that must be refused: no token, a forged one, an expired one. */
async function refusals() {
  const kinds = [
    () => ({}),
    () => ({ token: token("mallory", { secret: "not-the-secret" }) }),
    () => ({ token: token("latecomer", { ttlSecs: -3600 }) }),
  ];
  let k = 0;
  while (Date.now() < deadline) {
    await sleep(rand(2000, 5000));
    try {
      const s = await connect(kinds[k++ % kinds.length](), "websocket");
      s.close();
      console.error("traffic: a handshake that should have been refused was accepted");
    } catch {
      stats.refusedAsExpected++;
    }
  }
}

/** A member who sometimes gets it wrong: FORBIDDEN and INVALID_PAYLOAD answers. */
async function mistakes() {
  const sub = `snap-${RUN_ID}-clumsy`;
  let s;
  let n = 0;
  while (Date.now() < deadline) {
    try {
      s ??= await connect({ token: token(sub) }, "websocket");
      if (n % 3 === 2) await send(s, chats[0], undefined, `${sub}-${n}`); // no content
      else await send(s, outsider, "let me in", `${sub}-${n}`);
      n++;
    } catch {
      s = undefined;
    }
    await sleep(rand(3000, 6000));
  }
  s?.close();
}

async function main() {
  for (let c = 0; c < CHATS; c++) {
    const members = users.filter((_, i) => chatsOf(i).includes(chats[c]));
    if (c === 0) members.push(`snap-${RUN_ID}-clumsy`);
    await api("POST", "/api/v1/chats", { chatId: chats[c], members });
  }
  await api("POST", "/api/v1/chats", { chatId: outsider, members: [`snap-${RUN_ID}-owner`] });

  await Promise.all([...users.map((_, i) => userLoop(i)), refusals(), mistakes()]);

  for (const chatId of [...chats, outsider]) {
    await api("DELETE", `/api/v1/chats/${encodeURIComponent(chatId)}`).catch(() => {});
  }
  console.log(JSON.stringify({ traffic: "done", runId: RUN_ID, durationSecs: DURATION, ...stats }));
  process.exit(0);
}

main().catch((e) => {
  console.error(`traffic: ${e?.stack ?? e}`);
  process.exit(1);
});
