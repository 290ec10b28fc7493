"""bench/search_efficiency.py cleans up after each arm by stopping only what that arm started (no `ray stop`,
which would stop every Ray on the machine, another search's included)."""
import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("search_efficiency", REPO / "bench" / "search_efficiency.py")
se = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = se  # dataclasses look their module up
_spec.loader.exec_module(se)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_an_arm_leaves_nothing_behind_and_stops_nothing_else(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # e.g. another search's Ray
    pid_file = tmp_path / "left.pid"
    # An arm that leaves a process of its own running after it exits (as a Ray daemon could).
    arm = textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
    """)
    try:
        se.run_own_session([sys.executable, "-c", arm])
        left = int(pid_file.read_text())
        for _ in range(50):
            if not _alive(left):
                break
            time.sleep(0.1)
        assert not _alive(left)
        assert other.poll() is None and _alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_a_failed_arm_is_an_error():
    with pytest.raises(subprocess.CalledProcessError):
        se.run_own_session([sys.executable, "-c", "raise SystemExit(3)"])

