"""The XTTSLoss terms benchmark (benchmarks/xtts_terms_bench.py) runs end to end at
a tiny shape and writes every row BENCHMARKS.md quotes: the plain step graph,
the XLA-compiled one (the MyXTTS trainer's default), the per-term shares and
the --breakdown rows (parts removed, the two fused ops alone, the cost of one
scalar op between the op's forward and backward, the stop term alone).
Timings are not checked (they are measured in benchmarks, not asserted)."""

import json
import os
import subprocess
import sys

from child_env import child_env

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "benchmarks",
    "xtts_terms_bench.py",
)


def test_terms_bench_tiny(tmp_path):
    out = tmp_path / "terms"
    args = "--batch 2 --frames 12 --mels 4 --tokens 5 --heads 2 --sets 2 --sets-all 1"
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args.split(), "--repeats", "2", "--rounds", "1"]
        + ["--breakdown", "--out", str(out)],
        env=child_env(),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "terms.json").read_text())
    for row in ("mel_stop", "mel_stop_xla"):
        assert set(results[row]) >= {"op_forward_backward_ms", "xtts_mel_stop_ms", "ratio"}
    assert "stop_loss" in results["all_heads"]["per_term_ms"]
    md = (tmp_path / "terms.md").read_text()
    assert "jit_compile=True" in md and "| stop_loss |" in md
    # The record names the command as run, every argument included.
    assert f"xtts_terms_bench.py {args} --repeats 2 --rounds 1 --breakdown --out {out}`" in md
    assert set(results["breakdown"]) == {
        "mel_no_updates",
        "mel",
        "mel_stop_no_updates",
        "mel_stop",
        "fused_ops_only",
    }
    assert "| mel + stop |" in md and "The two fused ops alone" in md
    assert set(results["scalar_op_us"]) == {"median", "p20", "p80", "chain_ops"}
    assert "One scalar TF op between" in md
    assert set(results["stop_term"]) >= {"fused_ms", "tf_ops_ms", "tf_ops_over_fused"}
    assert "The stop term alone" in md
