"""How a user logs in to the Ray dashboard: Ray's token authentication stays on; the token is never printed."""
from __future__ import annotations

import os
from pathlib import Path

TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def login_instructions() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        where = "the value of $RAY_AUTH_TOKEN in this shell"
    else:
        where = f"the token Ray keeps in {TOKEN_FILE} (print it with `ray get-auth-token`)"
    return (f"The dashboard uses Ray's token authentication: when it asks, paste {where}. "
            f"It listens on loopback only unless --dashboard-host names another address; from another "
            f"machine use an SSH tunnel (ssh -L 8265:127.0.0.1:8265 HOST).")
