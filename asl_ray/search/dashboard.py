"""How a user logs in to the Ray dashboard: Ray's token authentication stays on; the token is never printed."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def dashboard_help(url: str) -> str:
    """What --dashboard prints: the dashboard's URL (with its scheme), then how to log in."""
    return f"Ray dashboard: {url}\n{login_instructions(urlparse(url).port or 8265)}"


def login_instructions(port: int = 8265) -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the value of $RAY_AUTH_TOKEN in this shell"
    else:
        where = f"the token Ray keeps in {TOKEN_FILE} (print it with `ray get-auth-token`)"
    return (f"The dashboard uses Ray's token authentication: when it asks, paste {where}. "
            f"It listens on loopback only unless --dashboard-host names another address; from another "
            f"machine use an SSH tunnel (ssh -L {port}:127.0.0.1:{port} HOST).")
