"""What the throwaway loopback servers (local_prosody.py, local_ejabberd.py,
local_postgres.py) share: free ports, a port check, and stopping every server still
running when the process exits. Stdlib only."""

from __future__ import annotations

import atexit
import socket
import weakref
from typing import Protocol

__all__ = ["free_port", "port_open", "stop_at_exit", "forget_at_exit"]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_LIVE: "weakref.WeakSet[_Stoppable]" = weakref.WeakSet()


def stop_at_exit(server: _Stoppable) -> None:
    """`server.stop()` runs when the process exits, unless forgotten first."""
    _LIVE.add(server)


def forget_at_exit(server: _Stoppable) -> None:
    _LIVE.discard(server)


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
