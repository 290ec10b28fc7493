"""The same search on a two-node Ray cluster (ray.cluster_utils.Cluster): trials land on both nodes."""
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from conftest import REPO, write_search_space

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    import ray
    from ray.cluster_utils import Cluster
    from asl_ray.search.__main__ import main
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        rc = main(sys.argv[1:] + ["--address", cluster.address])
    finally:
        ray.shutdown()
        cluster.shutdown()
    sys.exit(rc)
""")


def test_search_places_trials_on_both_nodes(synth_root, synth_cache, tmp_path):
    space = write_search_space(tmp_path / "space.yaml", trials=2, epochs=1, grace_period=1, max_steps_per_epoch=3)
    # 0.9 CPU per Train worker on 1-CPU nodes: two concurrent trials can only run one per node.
    args = ["--space", str(space), "--data", str(synth_root), "--cache-dir", str(synth_cache.path.parent),
            "--storage-path", str(tmp_path / "runs"), "--name", "multi", "--concurrency", "2", "--cpus-per-trial", "0.9"]
    run = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "runs" / "multi" / "trials.parquet")
    launched = df[~df["status"].isin(["rejected", "no_plan"])]
    assert len(launched) == 2
    assert launched["node_id"].nunique() == 2, launched[["trial_id", "node_id"]]
