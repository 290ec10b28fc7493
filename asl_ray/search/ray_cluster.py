"""The search's Ray: its own local cluster (a checked dashboard port, the Train page on), or an existing one.

Several searches may run on one machine at once, each on its own local Ray. Ray code that finds "the" cluster
by itself (Train's placement-group cleaner asks the state API with no address) then sees several and fails, so
every process of a local cluster is told its own dashboard's address before the cluster starts.

The console stays quiet: workers' output (Train's controller and worker lines, each epoch's TrainingReport,
their warnings) goes to Ray's log files only (`log_to_driver=False`); the summary names their folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from asl_ray.cli import fail
from asl_ray.train.local_ray import init_local_ray

if TYPE_CHECKING:
    from asl_ray.search.config import SearchConfig


def start_ray(sc: "SearchConfig") -> Optional[Path]:
    """Ray up for this search (a running one in this process is kept); returns the folder of its log files
    (on the head node for --address), None when Ray was already up."""
    import ray
    if ray.is_initialized():
        return None
    if sc.address:
        context = ray.init(address=sc.address, configure_logging=False, log_to_driver=False)
    else:
        # Loopback unless --dashboard-host says otherwise.
        try:
            context = init_local_ray(sc.dashboard_host, sc.dashboard_port, sc.num_cpus, log_to_driver=False)
        except ValueError as e:  # the port was taken between our check and Ray's
            if "already occupied" not in str(e):
                raise
            fail(f"--dashboard-port {sc.dashboard_port}: {sc.dashboard_host}:{sc.dashboard_port} "
                 f"was taken while Ray started; choose another port")
    if sc.dashboard:
        from asl_ray.search.dashboard import dashboard_help
        url = context.dashboard_url or f"{sc.dashboard_host}:{sc.dashboard_port}"
        print(dashboard_help(url if "://" in url else f"http://{url}"), flush=True)
    session_dir = context.address_info.get("session_dir")
    return Path(session_dir) / "logs" if session_dir else None
