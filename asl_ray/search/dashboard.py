"""The search's Ray dashboard: which port it takes (checked before Ray starts), and how a user logs in (Ray's
token authentication stays on; the token is never printed). No Ray here."""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from asl_ray.cli import fail
from asl_ray.train.local_ray import free_port

TOKEN_FILE = Path.home() / ".ray" / "auth_token"
DEFAULT_DASHBOARD_PORT = 8265


def dashboard_help(url: str) -> str:
    """What --dashboard prints: the dashboard's URL (with its scheme), then how to log in."""
    return f"Ray dashboard: {url}\n{login_instructions(urlparse(url).port or DEFAULT_DASHBOARD_PORT)}"


def login_instructions(port: int = DEFAULT_DASHBOARD_PORT) -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the value of $RAY_AUTH_TOKEN in this shell"
    else:
        where = f"the token Ray keeps in {TOKEN_FILE} (print it with `ray get-auth-token`)"
    return (f"The dashboard uses Ray's token authentication: when it asks, paste {where}. "
            f"It listens on loopback only unless --dashboard-host names another address; from another "
            f"machine use an SSH tunnel (ssh -L {port}:127.0.0.1:{port} HOST).")


def port_is_free(host: str, port: int) -> bool:
    """Whether Ray can take host:port for its dashboard; a host this machine cannot bind to is refused."""
    # Bound the way Ray checks it before starting its dashboard, so "free" here means Ray can take it.
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        fail(f"--dashboard-host {host!r}: cannot listen there: {e.strerror or e}")
    return True


def choose_dashboard_port(host: str, requested: Optional[int], log: Callable[[str], None] = print) -> int:
    """The port the local dashboard will use: the one asked for (refused in one line if taken), else 8265,
    else (another Ray has it) any free port, said so."""
    if requested is not None:
        if not port_is_free(host, requested):
            fail(f"--dashboard-port {requested}: {host}:{requested} is already in use (another search's "
                 f"dashboard?); choose another port, or leave the flag out to take a free one")
        return requested
    if port_is_free(host, DEFAULT_DASHBOARD_PORT):
        return DEFAULT_DASHBOARD_PORT
    port = free_port(host)
    log(f"dashboard port {DEFAULT_DASHBOARD_PORT} is in use (another Ray?): this search's dashboard uses {port}")
    return port
