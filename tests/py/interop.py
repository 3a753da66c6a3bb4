# Interop check: the Python Socket.IO client (python-socketio, asyncio) against two fanout
# nodes on one Redis. The counterpart of tests/js/interop.mjs, plus presence and history after
# a reconnect to another node.
#
# Environment:
#   URL_A, URL_B  base URLs of two nodes of one cluster, e.g. http://127.0.0.1:3000
#   TOKEN_ALICE   JWT for alice (sent as auth.token)
#   TOKEN_BOB     JWT for bob (sent as the Authorization: Bearer header on node A, as
#                 auth.token on node B)
#   CHAT          id of a chat whose members include alice and bob, created before the run
#   TRANSPORT     "websocket" or "polling" (the only transport the clients may use)
#
# Exits 0 and prints one JSON summary line on success; exits 1 with a message naming the
# failed step otherwise.

import asyncio
import importlib.metadata
import json
import os
import sys
import traceback

import socketio

N = 10
LATE = 3
STEP_S = 10
ACK_S = 5

current = "setup"


def fail(step, message):
    transport = os.environ.get("TRANSPORT")
    print(f'interop FAILED at step "{step}" (transport {transport}): {message}', file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def env(name):
    v = os.environ.get(name)
    if not v:
        fail("setup", f"environment variable {name} is not set")
    return v


URL_A = env("URL_A")
URL_B = env("URL_B")
TOKEN_ALICE = env("TOKEN_ALICE")
TOKEN_BOB = env("TOKEN_BOB")
CHAT = env("CHAT")
TRANSPORT = env("TRANSPORT")
if TRANSPORT not in ("websocket", "polling"):
    fail("setup", f'TRANSPORT must be "websocket" or "polling", got {TRANSPORT!r}')


def show(v):
    return json.dumps(v)


def check(cond, message):
    if not cond:
        raise AssertionError(message)


async def step(name, fn, timeout=STEP_S):
    """Runs one step under a timeout; any exception or timeout fails the run with its name."""
    global current
    current = name
    try:
        return await asyncio.wait_for(fn(), timeout)
    except asyncio.TimeoutError:
        fail(name, f"timed out after {timeout} s")
    except Exception:  # noqa: BLE001 - every failure names its step
        fail(name, traceback.format_exc())


class Peer:
    """One python-socketio client that records what the server sends it."""

    def __init__(self, name):
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=False)
        self.messages = []
        self.online = []
        self.offline = []
        self.bulk = []
        # presence:online/offline in arrival order: ("online" | "offline", payload)
        self.presence = []
        self.errors = []
        self.connect_errors = []
        self.changed = asyncio.Event()
        s = self.sio

        @s.on("chat:message")
        async def on_message(m):
            self.messages.append(m)
            self.changed.set()

        @s.on("presence:online")
        async def on_online(p):
            self.online.append(p)
            self.presence.append(("online", p))
            self.changed.set()

        @s.on("presence:offline")
        async def on_offline(p):
            self.offline.append(p)
            self.presence.append(("offline", p))
            self.changed.set()

        @s.on("presence:bulk-online")
        async def on_bulk(p):
            self.bulk.append(p)
            self.changed.set()

        @s.on("error")
        async def on_error(e):
            self.errors.append(e)

        @s.on("connect_error")
        async def on_connect_error(data):
            self.connect_errors.append(data)

    async def connect(self, url, *, auth=None, headers=None):
        await self.sio.connect(
            url,
            auth=auth,
            headers=headers or {},
            transports=[TRANSPORT],
            wait_timeout=ACK_S,
        )
        used = self.sio.transport()
        check(used == TRANSPORT, f"{self.name} is on transport {used!r}, expected {TRANSPORT}")

    async def call(self, event, data):
        return await self.sio.call(event, data, timeout=ACK_S)

    async def wait_until(self, what, cond):
        """Waits until cond() holds; on timeout says what was awaited and what arrived."""
        try:
            while not cond():
                self.changed.clear()
                await asyncio.wait_for(self.changed.wait(), STEP_S - 1)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{self.name}: no {what}; got messages at offsets "
                f"{show([m.get('offset') for m in self.messages])}, online {show(self.online)}, "
                f"offline {show(self.offline)}, errors {show(self.errors)}"
            ) from None


def presence_of(who, user):
    """The kinds of the presence events `who` got about `user`, in order."""
    return [kind for kind, p in who.presence if p.get("userId") == user]


async def refused(label, auth=None, headers=None):
    """A client with bad credentials is refused with a connect_error starting UNAUTHORIZED."""
    bad = Peer(label)
    outcome = asyncio.Event()
    connected = []

    @bad.sio.on("connect")
    async def on_connect():
        connected.append(True)
        outcome.set()

    bad.sio.on("connect_error", lambda data: (bad.connect_errors.append(data), outcome.set()))
    # wait=False: connect() returns once Engine.IO is open and the outcome is awaited here.
    # (With wait=True python-socketio also waits for its own disconnect after the refusal,
    # which over polling can take until the server's 10 s connect timeout ends the pending
    # long-poll request.)
    await bad.sio.connect(
        URL_A, auth=auth, headers=headers or {}, transports=[TRANSPORT], wait=False
    )
    await asyncio.wait_for(outcome.wait(), ACK_S)
    if connected:
        await bad.sio.disconnect()
        raise AssertionError(f"a client with {label} was connected")
    check(len(bad.connect_errors) == 1, f"{label}: connect_error events {show(bad.connect_errors)}")
    data = bad.connect_errors[0]
    msg = data.get("message") if isinstance(data, dict) else data
    check(
        isinstance(msg, str) and msg.startswith("UNAUTHORIZED"),
        f"{label}: connect_error message should start with UNAUTHORIZED, got {show(data)}",
    )
    return msg


async def main():
    summary = {"ok": True, "client": "python-socketio", "transport": TRANSPORT, "chat": CHAT}
    summary["version"] = importlib.metadata.version("python-socketio")

    # (1) A bad token, and no token at all, are refused at the handshake with UNAUTHORIZED.
    async def refusals():
        summary["refusals"] = {
            "bad auth.token": await refused("bad auth.token", auth={"token": "not-a-jwt"}),
            "bad Authorization header": await refused(
                "bad Authorization header", headers={"Authorization": "Bearer not-a-jwt"}
            ),
            "no token": await refused("no token"),
        }

    await step("bad token refused", refusals)

    alice = Peer("alice")
    bob = Peer("bob")

    # (2) bob (Authorization header) connects to node A, then alice (auth.token): bob, a peer,
    # sees alice come online; alice's bulk-online lists bob.
    async def connect_both():
        await bob.connect(URL_A, headers={"Authorization": f"Bearer {TOKEN_BOB}"})
        # bob's bulk-online comes once his socket is registered in presence: alice then finds
        # him online (her bulk-online), so his own presence:online is not about to race hers.
        await bob.wait_until("presence:bulk-online", lambda: len(bob.bulk) > 0)
        check(bob.bulk[0].get("users") == [], f"bob bulk-online {show(bob.bulk)}")
        await alice.connect(URL_A, auth={"token": TOKEN_ALICE})
        await bob.wait_until(
            "presence:online of alice", lambda: any(p.get("userId") == "alice" for p in bob.online)
        )
        await alice.wait_until("presence:bulk-online", lambda: len(alice.bulk) > 0)
        check(alice.bulk[0].get("users") == ["bob"], f"alice bulk-online {show(alice.bulk)}")
        p = next(p for p in bob.online if p.get("userId") == "alice")
        check(isinstance(p.get("timestamp"), str), f"presence:online payload {show(p)}")
        summary["sids"] = {"alice": alice.sio.get_sid(), "bob": bob.sio.get_sid()}

    await step("connect bob (Authorization header) and alice (auth.token), presence:online", connect_both)

    # (3) alice sends N messages without any chat:join (the handshake joined both sockets to
    # every chat of theirs); each is ACCEPTED, offsets consecutive.
    acks = []

    async def send():
        for i in range(N):
            cid = f"interop-py-{TRANSPORT}-{i}"
            ack = await alice.call(
                "chat:send", {"chatId": CHAT, "content": f"message {i}", "clientMsgId": cid}
            )
            check(
                isinstance(ack, dict) and ack.get("success") is True and ack.get("status") == "ACCEPTED",
                f"send #{i} ACK {show(ack)}",
            )
            check(ack.get("clientMsgId") == cid, f"send #{i} ACK clientMsgId {show(ack)}")
            check(type(ack.get("offset")) is int, f"send #{i} ACK offset is not an integer: {show(ack)}")
            if acks:
                check(
                    ack["offset"] == acks[-1]["offset"] + 1,
                    f"send #{i} offset {ack['offset']} after {acks[-1]['offset']}",
                )
            acks.append(ack)

    await step(f"chat:send x{N} (joined at connect, no chat:join)", send)
    summary["offsets"] = [acks[0]["offset"], acks[-1]["offset"]]

    # (4) Both receive the N chat:message events, in order, matching the ACKs.
    async def receive():
        for who in (alice, bob):
            await who.wait_until(f"{N} chat:message events", lambda who=who: len(who.messages) >= N)
            for i, m in enumerate(who.messages):
                a = acks[i]
                check(
                    m.get("chatId") == CHAT
                    and m.get("senderId") == "alice"
                    and m.get("content") == f"message {i}"
                    and m.get("offset") == a["offset"]
                    and m.get("id") == a["messageId"]
                    and m.get("epoch") == a["epoch"],
                    f"{who.name} message #{i} {show(m)} does not match ACK {show(a)}",
                )

    await step(f"receive chat:message x{N}", receive)

    # (4b) chat:join answers its ACK (the socket already is in the room: nothing changes).
    async def join():
        for who in (alice, bob):
            ack = await who.call("chat:join", {"chatId": CHAT})
            check(
                isinstance(ack, dict) and ack.get("success") is True and ack.get("chatId") == CHAT,
                f"{who.name} chat:join ACK {show(ack)}",
            )

    await step("chat:join", join)

    # (5) An unknown event is answered with INVALID_EVENT.
    async def unknown():
        ack = await alice.call("interop:no-such-event", {"x": 1})
        check(
            isinstance(ack, dict)
            and ack.get("success") is False
            and (ack.get("error") or {}).get("code") == "INVALID_EVENT",
            f"unknown event ACK {show(ack)}",
        )

    await step("unknown event", unknown)

    # (6) bob disconnects: alice sees presence:offline (reason disconnected).
    last_seen = bob.messages[-1]

    async def bob_leaves():
        await bob.sio.disconnect()
        await alice.wait_until(
            "presence:offline of bob", lambda: any(p.get("userId") == "bob" for p in alice.offline)
        )
        p = next(p for p in alice.offline if p.get("userId") == "bob")
        check(p.get("reason") == "disconnected", f"presence:offline payload {show(p)}")

    await step("bob disconnects, presence:offline", bob_leaves)

    # (7) alice sends LATE more messages while bob is away.
    async def send_late():
        for i in range(N, N + LATE):
            ack = await alice.call("chat:send", {"chatId": CHAT, "content": f"message {i}"})
            check(ack.get("success") is True and ack.get("status") == "ACCEPTED", f"late send ACK {show(ack)}")
            check(ack.get("clientMsgId") is None, f"late send ACK clientMsgId {show(ack)}")
            acks.append(ack)

    await step(f"chat:send x{LATE} while bob is away", send_late)

    # (8) bob reconnects to node B (auth.token this time); alice, on node A, sees him online
    # again; bob's history since the last offset he saw is exactly what he missed.
    bob2 = Peer("bob@B")

    async def bob_back():
        await bob2.connect(URL_B, auth={"token": TOKEN_BOB})
        await bob2.wait_until("presence:bulk-online", lambda: len(bob2.bulk) > 0)
        check(bob2.bulk[0].get("users") == ["alice"], f"bob@B bulk-online {show(bob2.bulk)}")
        await alice.wait_until(
            "presence:online of bob (on node B) after his presence:offline",
            lambda: presence_of(alice, "bob")[-1:] == ["online"]
            and "offline" in presence_of(alice, "bob"),
        )
        h = await bob2.call(
            "chat:history",
            {"chatId": CHAT, "since": last_seen["offset"], "epoch": last_seen["epoch"]},
        )
        check(isinstance(h, dict) and h.get("success") is True, f"chat:history ACK {show(h)}")
        check(h.get("reset") is False, f"chat:history reset {show(h)}")
        check(h.get("offset") == acks[-1]["offset"], f"history offset {h.get('offset')} != {acks[-1]['offset']}")
        got = [(m.get("offset"), m.get("content"), m.get("id")) for m in h.get("messages", [])]
        want = [(a["offset"], f"message {N + j}", a["messageId"]) for j, a in enumerate(acks[N:])]
        check(got == want, f"history since {last_seen['offset']}: {show(got)}, expected {show(want)}")
        summary["history"] = [g[0] for g in got]

    await step("bob reconnects to node B, presence:online, chat:history since", bob_back)

    # (9) A message sent on node A reaches bob on node B (joined at connect there too).
    async def cross_node():
        before = len(bob2.messages)
        ack = await alice.call("chat:send", {"chatId": CHAT, "content": "across nodes"})
        check(ack.get("success") is True, f"send ACK {show(ack)}")
        await bob2.wait_until("chat:message across nodes", lambda: len(bob2.messages) > before)
        m = bob2.messages[before]
        check(m.get("offset") == ack["offset"] and m.get("content") == "across nodes", show(m))

    await step("chat:message from node A to bob on node B", cross_node)

    # (10) alice disconnects: bob, on node B, sees her go offline.
    async def alice_leaves():
        await alice.sio.disconnect()
        await bob2.wait_until(
            "presence:offline of alice", lambda: any(p.get("userId") == "alice" for p in bob2.offline)
        )
        p = next(p for p in bob2.offline if p.get("userId") == "alice")
        check(p.get("reason") == "disconnected", f"presence:offline payload {show(p)}")

    await step("alice disconnects, presence:offline across nodes", alice_leaves)

    # Nothing unexpected arrived meanwhile: no server `error` events, no repeated presence.
    async def no_strays():
        await asyncio.sleep(0.3)
        for who in (alice, bob, bob2):
            check(not who.errors, f"{who.name} saw error events {show(who.errors)}")
        # Exactly one event per transition. The one duplicate the protocol allows (Part II,
        # section 11, reading 19) is at connect time: a peer listed in presence:bulk-online may
        # also arrive as presence:online right after; a client treats it as a no-op.
        seen = presence_of(alice, "bob")
        if seen[:1] == ["online"]:
            seen = seen[1:]
        check(seen == ["offline", "online"], f"alice's presence events about bob {show(alice.presence)}")
        check(presence_of(bob, "alice") == ["online"], f"bob's presence events {show(bob.presence)}")
        check(presence_of(bob2, "alice") == ["offline"], f"bob@B's presence events {show(bob2.presence)}")
        check(len(alice.presence) == len(presence_of(alice, "bob")), f"alice {show(alice.presence)}")
        check(len(bob.presence) == 1 and len(bob2.presence) == 1, show([bob.presence, bob2.presence]))

    await step("no stray events", no_strays)

    await step("disconnect", bob2.sio.disconnect)
    summary["received"] = {"alice": len(alice.messages), "bob": len(bob.messages), "bob@B": len(bob2.messages)}
    print(json.dumps(summary))


async def guarded():
    try:
        await asyncio.wait_for(main(), 60)
    except asyncio.TimeoutError:
        fail(current, "the run took longer than 60 s")


asyncio.run(guarded())
sys.stdout.flush()
os._exit(0)
