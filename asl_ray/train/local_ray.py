"""A local Ray of this process's own: started with its own dashboard address and the Train page on.

Several Rays may run on one machine at once (two searches, a search and `train --ray`). Ray code that finds
"the" cluster by itself (Train's placement-group cleaner asks the state API with no address) then sees several
and fails, so every process of a local cluster is told its own dashboard's address before the cluster starts.
"""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator, Optional

STATE_TRACKING_VARIABLE = "RAY_TRAIN_ENABLE_STATE_TRACKING"
"""Ray 2.60 keeps Train runs off the dashboard's Train page (and its /api/train/v2/runs) unless this is 1 in
the environment of the processes that run the TorchTrainer."""
API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"
"""Where Ray's state API client looks first (before RAY_ADDRESS and before scanning for local clusters).
Unlike RAY_ADDRESS, ray.init ignores it, so it can be set before the cluster it names exists."""


def api_server_url(host: str, port: int) -> str:
    """How processes on this machine reach a dashboard bound to host:port."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with values set (not overriding a user's own), restored on exit: the processes started
    meanwhile keep them, this process does not (a later Ray in the same process must not inherit them)."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_local_ray(dashboard_host: str, dashboard_port: int, num_cpus: Optional[int] = None,
                   log_to_driver: bool = True):
    """ray.init of a new local cluster (never one started by `ray start`), its dashboard on host:port;
    returns Ray's context (its `dashboard_url`, `address_info`). `log_to_driver=False` keeps the workers'
    output in Ray's log files only."""
    import ray
    own = {STATE_TRACKING_VARIABLE: "1", API_SERVER_VARIABLE: api_server_url(dashboard_host, dashboard_port)}
    with environment(own):
        # The dashboard process always runs: Train's placement-group cleanup queries its state API.
        return ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host,
                        dashboard_port=dashboard_port, configure_logging=False, log_to_driver=log_to_driver)
