"""Real XMPP clients for the benchmark, in their own process (own event loop).

    python benchmarks/clients.py --port C2S_PORT --domain D --user NAME:PASSWORD ...

Each client logs in (plaintext SASL on loopback), sends initial presence and
counts, with raw handlers, the management messages
(`{jabber:client}message/{jabber:iq:configuration}presencehandshake`) and the
plain chat messages (`{jabber:client}message/{jabber:client}body`) it receives.
Commands are JSON lines on stdin, answers JSON lines on stdout:

- {"cmd": "reset"}                                   -> {"ok": true}
- {"cmd": "wait", "kind": "management"|"chat", "count": N, "timeout": S}
      -> {"count", "first", "last"} (time.monotonic(), system-wide on Linux)
- {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jsonlines import answer, stdin_commands  # noqa: E402

NS_CONF = "jabber:iq:configuration"
NS_DELAY = "urn:xmpp:delay"


class Counter:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.changed = asyncio.Event()

    def hit(self) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1
        self.changed.set()


async def connect(jid: str, password: str, port: int, counters: dict[str, Counter]) -> slixmpp.ClientXMPP:
    client = slixmpp.ClientXMPP(f"{jid}/bench", password)
    client.enable_starttls = False
    client.enable_direct_tls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_session_start(_event: object) -> None:
        client.send_presence()
        if not ready.done():
            ready.set_result(None)

    def on_failure(event: object) -> None:
        if not ready.done():
            ready.set_exception(RuntimeError(f"{jid} could not log in: {event!r}"))

    def counted(kind: str):
        def handler(msg: slixmpp.Message) -> None:
            if msg.xml.find(f"{{{NS_DELAY}}}delay") is None:  # live traffic only
                counters[kind].hit()
        return handler

    client.register_handler(
        Callback("bench management", MatchXPath(f"{{jabber:client}}message/{{{NS_CONF}}}presencehandshake"),
                 counted("management"))
    )
    client.register_handler(
        Callback("bench chat", MatchXPath("{jabber:client}message/{jabber:client}body"), counted("chat"))
    )
    client.add_event_handler("session_start", on_session_start)
    client.add_event_handler("failed_all_auth", on_failure)
    client.add_event_handler("connection_failed", on_failure)
    client.connect("127.0.0.1", port)
    await asyncio.wait_for(ready, 60)
    return client


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--user", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    counters = {"management": Counter(), "chat": Counter()}
    sem = asyncio.Semaphore(8)

    async def one(spec: str) -> slixmpp.ClientXMPP:
        name, _, password = spec.partition(":")
        async with sem:
            return await connect(f"{name}@{args.domain}", password, args.port, counters)

    clients = await asyncio.gather(*(one(u) for u in args.user))
    answer({"ready": len(clients)})
    async for cmd in stdin_commands():
        if cmd["cmd"] == "reset":
            for c in counters.values():
                c.reset()
            answer({"ok": True})
        elif cmd["cmd"] == "wait":
            counter = counters[cmd["kind"]]
            deadline = time.monotonic() + cmd["timeout"]
            while counter.count < cmd["count"] and time.monotonic() < deadline:
                counter.changed.clear()
                try:
                    await asyncio.wait_for(counter.changed.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
            answer({"count": counter.count, "first": counter.first, "last": counter.last})
        elif cmd["cmd"] == "quit":
            break
    for client in clients:
        client.abort()


if __name__ == "__main__":
    asyncio.run(main())
