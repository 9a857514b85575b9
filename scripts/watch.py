#!/usr/bin/env python3
"""A tiny XMPP client that prints what the service sends a user.

    .venv/bin/python scripts/watch.py alice@example.test alice-password --port 15222
    .venv/bin/python scripts/watch.py bob@example.test bob-password --port 15222 --subscribe '*3101'

It logs in (plaintext SASL: for the loopback demo server only), fetches its roster,
goes online, optionally subscribes to extensions on the component, and prints one
line per management message, roster push and presence from the component until
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_CONFIGURATION = "jabber:iq:configuration"
NS_STATE = "urn:xmpp:presence-consent:0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jid")
    parser.add_argument("password")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=15222)
    parser.add_argument("--component", default="presence.example.test")
    parser.add_argument("--subscribe", action="append", default=[], metavar="EXTENSION")
    args = parser.parse_args()
    asyncio.run(watch(args))


async def watch(args: argparse.Namespace) -> None:
    client = slixmpp.ClientXMPP(f"{args.jid}/watch", args.password)
    client.enable_direct_tls = False
    client.enable_starttls = False
    client.enable_plaintext = True
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    stop = asyncio.Event()

    def on_management(msg) -> None:
        # Recognised by the child element, whatever the type: ejabberd rewrites the
        # non-standard type="management" to "normal".
        for child in msg.xml:
            if child.tag.startswith(f"{{{NS_CONFIGURATION}}}"):
                name = child.tag.partition("}")[2]
                attrs = " ".join(f"{k}={v}" for k, v in sorted(child.attrib.items()))
                print(f"management  {name} {attrs} (type={msg.xml.get('type') or 'normal'})", flush=True)

    def on_roster(iq) -> None:
        for jid, item in iq["roster"]["items"].items():
            print(f"roster      {jid} subscription={item['subscription']}", flush=True)

    def on_presence(pres) -> None:
        if pres["from"].domain != args.component:
            return
        dialog = pres.xml.find(f"{{{NS_STATE}}}dialog")
        state = f" state={dialog.get('state')} sequence={dialog.get('sequence')}" if dialog is not None else ""
        print(
            f"presence    from={pres['from']} type={pres['type']} show={pres['show'] or '-'}"
            f" status={pres['status'] or '-'}{state}",
            flush=True,
        )

    async def on_start(_event) -> None:
        await client.get_roster()
        client.send_presence()
        print(f"online as {client.boundjid}", flush=True)
        for extension in args.subscribe:
            client.send_presence(pto=f"{extension}@{args.component}", ptype="subscribe")
            print(f"subscribing to {extension}@{args.component}", flush=True)

    client.register_handler(
        Callback(
            "management",
            MatchXPath("{jabber:client}message"),
            on_management,
        )
    )
    client.register_handler(
        Callback("component presence", MatchXPath("{jabber:client}presence"), on_presence)
    )
    client.add_event_handler("roster_update", on_roster)
    client.add_event_handler("session_start", on_start)
    client.add_event_handler("failed_all_auth", lambda _: (print("login failed"), stop.set()))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client.connect(args.host, args.port)
    await stop.wait()
    await client.disconnect()


if __name__ == "__main__":
    main()
