"""A port on 127.0.0.1 that nothing listens on (an unreachable tracking server)."""
from __future__ import annotations

import socket


def closed_port() -> int:
    """A port the system just handed out and took back: free once closed, so a connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there
