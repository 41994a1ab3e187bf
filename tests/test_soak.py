"""Short soak of XTTSLoss (benchmarks/soak.py, 3,000 steps): random NaN batches,
50x spikes, empty batches, overflowing batches and gradient-norm surges inside a
tf.function, and two-thread bursts of eager calls between chunks; every
output and variable finite, the weight in bounds, counters consistent, and no
RSS growth. The full run is ``python benchmarks/soak.py --steps 100000``."""

import json
import os
import subprocess
import sys

from child_env import child_env

SOAK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "soak.py"
)


def test_soak_short(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            SOAK,
            "--steps",
            "3000",
            "--chunk",
            "500",
            "--quiet",
            "--max-rss-growth-mb",
            "32",
            "--json",
            str(out),
        ],
        env=child_env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert proc.returncode == 0 and r["ok"], r["errors"]
    assert r["steps"] == 3000
    # The run exercised what it is meant to.
    assert r["nan_batches"] > 0 and r["spike_batches"] > 0 and r["gradient_surges"] > 0
    assert r["empty_batches"] > 0 and r["weight_changes"] > 0
    assert r["loss_nonfinite_steps"] == r["nan_batches"]  # NaN or overflow, non-empty
    assert r["overflow_batches"] > 0
    # Every eager call of the bursts either ran (and was counted) or was refused.
    assert r["concurrent_calls_run"] + r["concurrent_calls_refused"] == 6 * 2 * 20
    assert r["loss_calls"] == 3000 + r["concurrent_calls_run"]
    assert 1.0 <= r["weight_min"] <= r["weight_max"] <= 5.0
