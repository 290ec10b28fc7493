"""The search's Ray: its own local cluster (a checked dashboard port, the Train page on), or an existing one.

Several searches may run on one machine at once, each on its own local Ray. Ray code that finds "the" cluster
by itself (Train's placement-group cleaner asks the state API with no address) then sees several and fails, so
every process of a local cluster is told its own dashboard's address before the cluster starts.
"""
from __future__ import annotations

import argparse
import errno
import socket
from typing import TYPE_CHECKING, Optional

from asl_ray.cli import fail
from asl_ray.train.local_ray import free_port, init_local_ray

if TYPE_CHECKING:
    from asl_ray.search.session import SearchPlan

DEFAULT_DASHBOARD_PORT = 8265


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
    port = free_port(host)
    print(f"dashboard port {DEFAULT_DASHBOARD_PORT} is in use (another Ray?): this search's dashboard uses {port}")
    return port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def start_ray(plan: "SearchPlan") -> None:
    import ray
    if ray.is_initialized():
        return
    if plan.address:
        context = ray.init(address=plan.address, configure_logging=False)
    else:
        # Loopback unless --dashboard-host says otherwise.
        try:
            context = init_local_ray(plan.dashboard_host, plan.dashboard_port, plan.num_cpus)
        except ValueError as e:  # the port was taken between our check and Ray's
            if "already occupied" not in str(e):
                raise
            fail(f"--dashboard-port {plan.dashboard_port}: {plan.dashboard_host}:{plan.dashboard_port} "
                 f"was taken while Ray started; choose another port")
    if plan.dashboard:
        from asl_ray.search.dashboard import dashboard_help
        url = context.dashboard_url or f"{plan.dashboard_host}:{plan.dashboard_port}"
        print(dashboard_help(url if "://" in url else f"http://{url}"), flush=True)
