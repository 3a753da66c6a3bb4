// Interop check: the official JavaScript socket.io-client against a fanout node.
//
// Environment:
//   URL          node base URL, e.g. http://127.0.0.1:3000
//   TOKEN_ALICE  JWT for alice (sent as auth.token)
//   TOKEN_BOB    JWT for bob (sent as the Authorization: Bearer header)
//   TOKEN_ALICE_LATER  a later-expiring JWT for alice (session:refresh)
//   CHAT         id of a chat whose members include alice and bob
//   TRANSPORT    "websocket" or "polling" (the only transport the clients may use)
//
// Exits 0 and prints one JSON summary line on success; exits 1 with a message naming the
// failed step otherwise.

import { io } from "socket.io-client";

import { checks } from "./steps.mjs";

const N = 20;
const ACK_MS = 5_000;

const STEP_MS = 10_000;
const { env, fail, step, current } = checks("interop", {
  stepMs: STEP_MS,
  overallMs: 60_000,
  context: () => `transport ${process.env.TRANSPORT}`,
});

const URL = env("URL");
const TOKEN_ALICE = env("TOKEN_ALICE");
const TOKEN_BOB = env("TOKEN_BOB");
const CHAT = env("CHAT");
const TRANSPORT = env("TRANSPORT");
if (TRANSPORT !== "websocket" && TRANSPORT !== "polling") {
  fail("setup", `TRANSPORT must be "websocket" or "polling", got ${JSON.stringify(TRANSPORT)}`);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const show = (v) => JSON.stringify(v);

/** A client that uses only TRANSPORT and never reconnects on its own. */
function client(opts) {
  return io(URL, {
    transports: [TRANSPORT],
    reconnection: false,
    forceNew: true,
    timeout: ACK_MS,
    ...opts,
  });
}

/** Resolves on `connect`, rejects with the connect_error. */
function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) =>
      reject(new Error(`connect_error: ${err.message}${err.data ? ` data=${show(err.data)}` : ""}`)),
    );
  });
}

/** Collects chat:message payloads and server `error` events of one socket. */
function recorder(socket) {
  const rec = { messages: [], errors: [], waiters: [] };
  socket.on("chat:message", (m) => {
    rec.messages.push(m);
    rec.waiters = rec.waiters.filter((w) => !w());
  });
  socket.on("error", (e) => rec.errors.push(e));
  socket.on("disconnect", (reason) => {
    if (current() !== "disconnect") rec.errors.push({ disconnect: reason });
  });
  rec.waitFor = (count) =>
    new Promise((resolve) => {
      const done = () => {
        if (rec.messages.length >= count) {
          resolve(rec.messages);
          return true;
        }
        return false;
      };
      if (!done()) rec.waiters.push(done);
    });
  return rec;
}

const summary = { ok: true, transport: TRANSPORT, url: URL, chat: CHAT };

// (1) A bad token, and no token at all, are refused at the handshake with UNAUTHORIZED.
await step("bad token refused", async () => {
  const cases = [
    ["bad auth.token", { auth: { token: "not-a-jwt" } }],
    ["bad Authorization header", { extraHeaders: { Authorization: "Bearer not-a-jwt" } }],
    ["no token", {}],
  ];
  summary.refusals = {};
  for (const [label, opts] of cases) {
    const bad = client(opts);
    const outcome = await new Promise((resolve) => {
      bad.once("connect", () => resolve({ connected: true }));
      bad.once("connect_error", (err) => resolve({ error: err }));
    });
    bad.close();
    check(!outcome.connected, `a client with ${label} was connected`);
    const msg = outcome.error.message;
    check(
      typeof msg === "string" && msg.startsWith("UNAUTHORIZED"),
      `${label}: connect_error message should start with UNAUTHORIZED, got ${show(msg)} (type ${outcome.error.type ?? "?"}, description ${show(outcome.error.description?.message ?? outcome.error.description)})`,
    );
    summary.refusals[label] = msg;
  }
});

// (2) alice with auth.token, bob with the Authorization header.
const alice = client({ auth: { token: TOKEN_ALICE } });
const bob = client({ extraHeaders: { Authorization: `Bearer ${TOKEN_BOB}` } });
const recAlice = recorder(alice);
const recBob = recorder(bob);

await step("connect alice (auth.token) and bob (Authorization header)", async () => {
  await Promise.all([connected(alice), connected(bob)]);
  for (const [name, s] of [["alice", alice], ["bob", bob]]) {
    const used = s.io.engine?.transport?.name;
    check(used === TRANSPORT, `${name} is on transport ${show(used)}, expected ${TRANSPORT}`);
  }
  summary.socketIds = { alice: alice.id, bob: bob.id };
});

// (3) Both join the chat.
await step("chat:join", async () => {
  for (const [name, s] of [["alice", alice], ["bob", bob]]) {
    const ack = await s.timeout(ACK_MS).emitWithAck("chat:join", { chatId: CHAT });
    check(ack?.success === true && ack.chatId === CHAT, `${name} chat:join ACK ${show(ack)}`);
  }
});

// (4) alice sends N messages, each ACCEPTED, offsets consecutive.
const acks = await step("chat:send x" + N, async () => {
  const out = [];
  for (let i = 0; i < N; i++) {
    const clientMsgId = `interop-${TRANSPORT}-${i}`;
    const ack = await alice
      .timeout(ACK_MS)
      .emitWithAck("chat:send", { chatId: CHAT, content: `message ${i}`, clientMsgId });
    check(ack?.success === true && ack.status === "ACCEPTED", `send #${i} ACK ${show(ack)}`);
    check(ack.clientMsgId === clientMsgId, `send #${i} ACK clientMsgId ${show(ack)}`);
    check(Number.isInteger(ack.offset), `send #${i} ACK offset is not an integer: ${show(ack)}`);
    if (i > 0) {
      check(ack.offset === out[i - 1].offset + 1, `send #${i} offset ${ack.offset} after ${out[i - 1].offset}`);
    }
    out.push(ack);
  }
  return out;
});
summary.offsets = [acks[0].offset, acks[N - 1].offset];

// (5) Both receive all N chat:message events, in order, matching the ACKs.
await step("receive chat:message x" + N, async () => {
  const receivers = [["alice", recAlice], ["bob", recBob]];
  const all = Promise.all(receivers.map(([, rec]) => rec.waitFor(N)));
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const got = receivers.map(([name, rec]) => `${name} got ${rec.messages.length}/${N} (offsets ${show(rec.messages.map((m) => m.offset))}, errors ${show(rec.errors)})`);
      reject(new Error(got.join("; ")));
    }, STEP_MS - 500);
  });
  await Promise.race([all, late]).finally(() => clearTimeout(timer));
  for (const [name, rec] of receivers) {
    rec.messages.forEach((m, i) => {
      const a = acks[i];
      check(
        a !== undefined &&
          m.chatId === CHAT &&
          m.senderId === "alice" &&
          m.content === `message ${i}` &&
          m.offset === a.offset &&
          m.id === a.messageId &&
          m.epoch === a.epoch,
        `${name} message #${i} ${show(m)} does not match ACK ${show(a)}`,
      );
    });
  }
});

// (6) An unknown event is answered with INVALID_EVENT.
await step("unknown event", async () => {
  const ack = await alice.timeout(ACK_MS).emitWithAck("interop:no-such-event", { x: 1 });
  check(ack?.success === false && ack.error?.code === "INVALID_EVENT", `unknown event ACK ${show(ack)}`);
});

// (6b) alice refreshes her session on the live connection; bob's token is refused for her.
await step("session:refresh", async () => {
  const later = env("TOKEN_ALICE_LATER");
  const ok = await alice.timeout(ACK_MS).emitWithAck("session:refresh", { token: later });
  const exp = JSON.parse(Buffer.from(later.split(".")[1], "base64url")).exp;
  check(ok?.success === true && ok.exp === exp, `refresh ACK ${show(ok)}, expected exp ${exp}`);
  const foreign = await alice.timeout(ACK_MS).emitWithAck("session:refresh", { token: TOKEN_BOB });
  check(
    foreign?.success === false && foreign.error?.code === "UNAUTHORIZED",
    `refresh with another user's token ACK ${show(foreign)}`,
  );
  check(alice.connected, "alice still connected after refreshing");
});

// Nothing unexpected arrived meanwhile (no server `error` events, no early disconnects,
// no extra chat:message).
await step("no stray events", async () => {
  await new Promise((r) => setTimeout(r, 300));
  for (const [name, rec] of [["alice", recAlice], ["bob", recBob]]) {
    check(rec.errors.length === 0, `${name} saw ${show(rec.errors)}`);
    check(rec.messages.length === N, `${name} got ${rec.messages.length} chat:message events, expected ${N}`);
  }
});

// (7) Both disconnect.
await step("disconnect", async () => {
  for (const s of [alice, bob]) {
    const gone = new Promise((resolve) => s.once("disconnect", resolve));
    s.disconnect();
    const reason = await gone;
    check(reason === "io client disconnect", `disconnect reason ${show(reason)}`);
    check(!s.connected, "socket still connected after disconnect()");
  }
});

summary.received = { alice: recAlice.messages.length, bob: recBob.messages.length };
console.log(JSON.stringify(summary));
process.exit(0);
