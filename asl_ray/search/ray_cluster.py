"""The search's Ray: its own local cluster (a checked dashboard port, the Train page on), or an existing one.

Several searches may run on one machine at once, each on its own local Ray. Ray code that finds "the" cluster
by itself (Train's placement-group cleaner asks the state API with no address) then sees several and fails, so
every process of a local cluster is told its own dashboard's address before the cluster starts.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
from typing import TYPE_CHECKING, Iterator, Optional

from asl_ray.cli import fail

if TYPE_CHECKING:
    from asl_ray.search.session import SearchPlan

DEFAULT_DASHBOARD_PORT = 8265
STATE_TRACKING_VARIABLE = "RAY_TRAIN_ENABLE_STATE_TRACKING"
"""Ray 2.60 keeps Train runs off the dashboard's Train page (and its /api/train/v2/runs) unless this is 1 in
the environment of the processes that run the TorchTrainer."""
API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"
"""Where Ray's state API client looks first (before RAY_ADDRESS and before scanning for local clusters).
Unlike RAY_ADDRESS, ray.init ignores it, so it can be set before the cluster it names exists."""


def port_number(text: str) -> int:
    """argparse type for --dashboard-port: a TCP port, 1..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {port}")
    return port


def port_is_free(host: str, port: int) -> bool:
    """Whether Ray can take host:port for its dashboard; a host this machine cannot bind to is refused."""
    # Bound the way Ray checks it before starting its dashboard, so "free" here means Ray can take it.
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        fail(f"--dashboard-host {host!r}: cannot listen there: {e.strerror or e}")
    return True


def choose_dashboard_port(host: str, requested: Optional[int]) -> int:
    """The port the local dashboard will use: the one asked for (refused in one line if taken), else 8265,
    else (another Ray has it) any free port, said so."""
    if requested is not None:
        if not port_is_free(host, requested):
            fail(f"--dashboard-port {requested}: {host}:{requested} is already in use (another search's "
                 f"dashboard?); choose another port, or leave the flag out to take a free one")
        return requested
    if port_is_free(host, DEFAULT_DASHBOARD_PORT):
        return DEFAULT_DASHBOARD_PORT
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    print(f"dashboard port {DEFAULT_DASHBOARD_PORT} is in use (another Ray?): this search's dashboard uses {port}")
    return port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def api_server_url(host: str, port: int) -> str:
    """How processes on this machine reach a dashboard bound to host:port."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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


def start_ray(plan: "SearchPlan") -> None:
    import ray
    if ray.is_initialized():
        return
    if plan.address:
        context = ray.init(address=plan.address, configure_logging=False)
    else:
        # The dashboard process always runs (Train's placement-group cleanup queries its state API);
        # it binds to loopback unless --dashboard-host says otherwise. address="local": never join a
        # cluster someone else started with `ray start` on this machine.
        own = {STATE_TRACKING_VARIABLE: "1",
               API_SERVER_VARIABLE: api_server_url(plan.dashboard_host, plan.dashboard_port)}
        with environment(own):
            try:
                context = ray.init(address="local", num_cpus=plan.num_cpus, include_dashboard=True,
                                   dashboard_host=plan.dashboard_host, dashboard_port=plan.dashboard_port,
                                   configure_logging=False)
            except ValueError as e:  # the port was taken between our check and Ray's
                if "already occupied" not in str(e):
                    raise
                fail(f"--dashboard-port {plan.dashboard_port}: {plan.dashboard_host}:{plan.dashboard_port} "
                     f"was taken while Ray started; choose another port")
    if plan.dashboard:
        from asl_ray.search.dashboard import dashboard_help
        url = context.dashboard_url or f"{plan.dashboard_host}:{plan.dashboard_port}"
        print(dashboard_help(url if "://" in url else f"http://{url}"), flush=True)
