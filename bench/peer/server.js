// The comparison peer of bench/compare.sh: fanout's chat subset (auth, chat:join, chat:send,
// chat:message) written the way a Node.js team would write it with socket.io 4.8 and the
// official @socket.io/redis-streams-adapter, so the two systems are measured under the same
// generator (target/release/fanout-bench --join) with the same Redis.
//
// What it deliberately does NOT do, so read its figures as a lower bound on the cost of the
// same features in Node: there is no membership store (a client may join any chat it names:
// the peer trusts joins, fanout checks membership in Redis at connect and join), no
// idempotency (clientMsgId is echoed, not deduplicated), no history, presence, rate limit or
// per-socket ordering guarantee beyond what the event loop gives. Offsets come from one Redis
// INCR per message; two nodes may broadcast two offsets of one chat in either order (the
// generator counts that as "offset regressions"), fanout publishes them in order.
//
// Everything is socket.io's default configuration (transports, ping 25 s / 20 s, buffer
// sizes, no perMessageDeflate); only the adapter is added.
//
// Environment: PORT (default 3000), BIND_ADDR (default 127.0.0.1), REDIS_URL (default
// redis://127.0.0.1:6379), JWT_SECRET (required, HS256), NODE_ID (default "peer").

import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";
import { createClient } from "redis";
import { createAdapter } from "@socket.io/redis-streams-adapter";
import jwt from "jsonwebtoken";

const PORT = Number(process.env.PORT ?? 3000);
const BIND_ADDR = process.env.BIND_ADDR ?? "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const JWT_SECRET = process.env.JWT_SECRET;
const NODE_ID = process.env.NODE_ID ?? "peer";

// Same limits as fanout's defaults (src/validate.rs, MAX_MESSAGE_BYTES), so bad input is
// refused the same way on both sides.
const ID_RE = /^[A-Za-z0-9_.:@-]{1,128}$/;
const MAX_CLIENT_MSG_ID = 64;
const MAX_CONTENT_BYTES = 16384;

const log = (...args) => console.error(`[${NODE_ID}]`, ...args);

if (!JWT_SECRET) {
  log("JWT_SECRET is required");
  process.exit(2);
}

const redis = createClient({ url: REDIS_URL });
// node-redis emits "error" on every failed reconnect; without a listener Node would crash.
// The client reconnects by itself, so a log line is all that is needed.
let lastRedisError = 0;
redis.on("error", (e) => {
  const now = Date.now();
  if (now - lastRedisError > 1000) {
    lastRedisError = now;
    log("redis:", e.message);
  }
});
await redis.connect();

const httpServer = createServer();
// The adapter publishes with this client and duplicates it for its blocking XREAD loop.
const io = new Server(httpServer, { adapter: createAdapter(redis) });

// fanout's protocol makes `epoch` a string (a new one when Redis lost a chat's sequence); the
// peer never changes it, but sends the same type so clients (and the generator) parse both alike.
const EPOCH = "1";

class ValidationError extends Error {}

function ackWith(ack, body) {
  // A client may emit without a callback; socket.io then passes no function.
  if (typeof ack === "function") ack(body);
}

function failure(e) {
  if (e instanceof ValidationError) {
    return { success: false, error: { code: "VALIDATION_ERROR", message: e.message } };
  }
  if (e && e.code === "FORBIDDEN") {
    return { success: false, error: { code: "FORBIDDEN", message: e.message } };
  }
  log("handler error:", e && e.stack ? e.stack : e);
  return { success: false, error: { code: "INTERNAL", message: "internal error" } };
}

function chatIdOf(payload) {
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw new ValidationError("payload must be a JSON object");
  }
  const { chatId } = payload;
  if (typeof chatId !== "string" || !ID_RE.test(chatId)) {
    throw new ValidationError("chatId must be 1-128 characters of [A-Za-z0-9_.:@-]");
  }
  return chatId;
}

// HS256 only: the algorithm list stops a token from choosing another one.
io.use((socket, next) => {
  try {
    const token = socket.handshake.auth && socket.handshake.auth.token;
    if (typeof token !== "string" || token === "") {
      throw new Error("missing token");
    }
    const claims = jwt.verify(token, JWT_SECRET, { algorithms: ["HS256"] });
    if (typeof claims.sub !== "string" || claims.sub === "") {
      throw new Error("no sub claim");
    }
    socket.data.userId = claims.sub;
    next();
  } catch (e) {
    const err = new Error(`UNAUTHORIZED: ${e.message}`);
    err.data = { code: "UNAUTHORIZED" };
    next(err);
  }
});

io.on("connection", (socket) => {
  const userId = socket.data.userId;

  socket.on("chat:join", (payload, ack) => {
    try {
      const chatId = chatIdOf(payload);
      // No membership check (see the top of the file): the peer trusts the client.
      socket.join("chat:" + chatId);
      ackWith(ack, { success: true, chatId });
    } catch (e) {
      ackWith(ack, failure(e));
    }
  });

  socket.on("chat:send", async (payload, ack) => {
    try {
      const chatId = chatIdOf(payload);
      const { content, clientMsgId } = payload;
      if (typeof content !== "string" || content === "") {
        throw new ValidationError("content must be a non-empty string");
      }
      if (Buffer.byteLength(content) > MAX_CONTENT_BYTES) {
        throw new ValidationError(`content is longer than ${MAX_CONTENT_BYTES} bytes`);
      }
      if (
        clientMsgId !== undefined &&
        clientMsgId !== null &&
        (typeof clientMsgId !== "string" || clientMsgId === "" || clientMsgId.length > MAX_CLIENT_MSG_ID)
      ) {
        throw new ValidationError(`clientMsgId must be a string of 1-${MAX_CLIENT_MSG_ID} characters`);
      }
      const room = "chat:" + chatId;
      if (!socket.rooms.has(room)) {
        const err = new Error("join the chat first");
        err.code = "FORBIDDEN";
        throw err;
      }
      const offset = await redis.incr(`peer:chat:${chatId}:offset`);
      const msg = {
        id: randomUUID(),
        chatId,
        senderId: userId,
        clientMsgId: clientMsgId ?? null,
        type: "text",
        content,
        createdAt: new Date().toISOString(),
        offset,
        epoch: EPOCH,
      };
      io.to(room).emit("chat:message", msg);
      ackWith(ack, {
        success: true,
        status: "ACCEPTED",
        clientMsgId: msg.clientMsgId,
        messageId: msg.id,
        chatId,
        offset,
        epoch: EPOCH,
        createdAt: msg.createdAt,
      });
    } catch (e) {
      ackWith(ack, failure(e));
    }
  });
});

httpServer.listen(PORT, BIND_ADDR, () => {
  log(`listening on http://${BIND_ADDR}:${PORT} (socket.io + redis streams adapter, ${REDIS_URL})`);
});

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: closing`);
  // Bounded: whatever is still open after 5 s is cut.
  setTimeout(() => process.exit(0), 5000).unref();
  io.close(() => {
    redis.quit().finally(() => process.exit(0));
  });
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
