"""Launches per training sample and samples/s with the whole model compiled: today's loop, each change alone
(the fewer-launches switches, compile + ladder), all eager switches, and everything, at the seed's default and
at the small CPU config.

    python bench/compiled_launches.py [--data DIR] [--steps 2] [--repeats 3] [--only-config "seed default"]

`bench/launches.py --compile` with its counts (launches, inductor kernels: exact) and timings (samples/s, ratio
to today in the same run, compile seconds: this machine). Writes bench/results/launches-compiled-<device>.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launches import main  # noqa: E402 (the sibling bench script)

if __name__ == "__main__":
    raise SystemExit(main(with_compile=True, stem="launches-compiled"))
