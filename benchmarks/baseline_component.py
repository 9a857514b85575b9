"""Baseline XEP-0114 component: a plain slixmpp ComponentXMPP, no storage, no logic.

    python benchmarks/baseline_component.py --jid J --secret S --port P --domain D

Commands are JSON lines on stdin, answers JSON lines on stdout:

- {"cmd": "messages", "to": [JID, ...]}: send one `<message type='chat'>` to each,
  then a ping to the domain (the stream is ordered: its answer means the server
  took them all) -> {"sent": N}
- {"cmd": "roster", "items": [[owner, contact, subscription], ...], "concurrency": 20,
   "messages": [JID, ...]}: privileged roster sets (XEP-0356), at most `concurrency` in
  flight, built exactly as the service builds them; with "messages", one
  `<message type='chat'>` to each JID is sent first (the dispatcher also sends a batch's
  messages at once and queues its roster IQs), and a ping after the last answer
  -> {"done": N, "errors": E}
- {"cmd": "replay", "rows": [[kind, recipient, payload], ...], "concurrency": 20}: the
  stanzas the service's outbox dispatcher sends for these outbox rows, in the same order
  and built with the same helpers (component.xmpp.slixfix, component.xmpp.notices): a
  management message per "message" row (child element, readable body, store hint), and
  per "roster" row the privileged roster get then the set (a grant sets the direction,
  named, on a new item; a revoke removes the item), one chain per roster item,
  at most `concurrency` IQs in flight; rows taken 500 at a time as the dispatcher reads
  them; a ping after the last answer -> {"done": N, "errors": E}
- {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jsonlines import answer, stdin_commands  # noqa: E402
from component.xmpp.notices import management_body  # noqa: E402
from component.xmpp.slixfix import (  # noqa: E402
    PrivilegeGrants,
    management_message,
    privileged_roster_get,
    privileged_roster_set,
)

NS_CONFIGURATION = "jabber:iq:configuration"
NS_HINTS = "urn:xmpp:hints"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jid", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--domain", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    xmpp = ComponentXMPP(args.jid, args.secret, "127.0.0.1", args.port, fix_error_ns=True)
    PrivilegeGrants.register_stanzas()
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    xmpp.add_event_handler("session_start", lambda _e: ready.done() or ready.set_result(None))
    xmpp.connect("127.0.0.1", args.port)
    await asyncio.wait_for(ready, 30)
    await asyncio.sleep(0.5)  # let the privilege advertisement pass
    answer({"ready": True})

    async def barrier() -> None:
        iq = xmpp.make_iq_get(ito=args.domain, ifrom=args.jid)
        ET.SubElement(iq.xml, "{urn:xmpp:ping}ping")
        try:
            await iq.send(timeout=120)
        except IqError:
            pass

    async for cmd in stdin_commands():
        if cmd["cmd"] == "messages":
            for i, to in enumerate(cmd["to"]):
                xmpp.make_message(mto=to, mfrom=args.jid, mbody="baseline", mtype="chat").send()
                if i % 500 == 499:
                    await asyncio.sleep(0)  # the dispatcher also sends batches of up to 500
            await barrier()
            answer({"sent": len(cmd["to"])})
        elif cmd["cmd"] == "roster":
            slots = asyncio.Semaphore(cmd.get("concurrency", 20))
            errors = 0

            async def one(owner: str, contact: str, subscription: str) -> None:
                nonlocal errors
                async with slots:
                    iq = privileged_roster_set(
                        xmpp, owner, contact, subscription, contact.partition("@")[0], args.jid
                    )
                    try:
                        await iq.send(timeout=60)
                    except (IqError, IqTimeout):
                        errors += 1

            for to in cmd.get("messages", []):
                xmpp.make_message(mto=to, mfrom=args.jid, mbody="baseline", mtype="chat").send()
            await asyncio.gather(*(one(*item) for item in cmd["items"]))
            if cmd.get("messages"):
                await barrier()
            answer({"done": len(cmd["items"]), "errors": errors})
        elif cmd["cmd"] == "replay":
            slots = asyncio.Semaphore(cmd.get("concurrency", 20))
            errors = 0
            chains: dict[tuple[str, str], asyncio.Task] = {}

            async def roster_row(previous: asyncio.Task | None, owner: str, payload: dict) -> None:
                nonlocal errors
                if previous is not None:
                    await previous
                contact = payload["jid"]
                sub = payload["direction"] if payload["op"] == "add" else "remove"
                for iq in (privileged_roster_get(xmpp, owner, args.jid),
                           privileged_roster_set(xmpp, owner, contact, sub, payload.get("name"), args.jid)):
                    async with slots:
                        try:
                            await iq.send(timeout=60)
                        except (IqError, IqTimeout):
                            errors += 1

            rows = cmd["rows"]
            for start in range(0, len(rows), 500):
                for k, (kind, recipient, payload) in enumerate(rows[start:start + 500], start):
                    if kind == "message":
                        msg = management_message(xmpp, recipient, args.jid, f"ph-{k}")
                        ET.SubElement(msg.xml, f"{{{NS_CONFIGURATION}}}presencehandshake", payload["handshake"])
                        msg["body"] = management_body(payload, args.jid)
                        ET.SubElement(msg.xml, f"{{{NS_HINTS}}}store")
                        msg.send()
                    else:
                        key = (recipient, payload["jid"])
                        chains[key] = asyncio.create_task(roster_row(chains.get(key), recipient, payload))
                await asyncio.sleep(0)
            await asyncio.gather(*chains.values())
            await barrier()
            answer({"done": len(rows), "errors": errors})
        elif cmd["cmd"] == "quit":
            break
    xmpp.abort()


if __name__ == "__main__":
    asyncio.run(main())
