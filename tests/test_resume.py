"""Resuming XTTSLoss state across processes (SPEC 4.3: "state restored exactly:
resuming gives the same trajectory as never stopping").

* ``tf.train.Checkpoint(loss=loss_fn)`` saved after step 150 in one process,
  restored into a new XTTSLoss in a new process that runs to step 300: every
  step (weight, op state, returned total) and the final value of every state
  variable equal an uninterrupted 300-step run exactly. The run has weight
  changes before and after the cut, a NaN step, a spike at the cut (step 150)
  and gradient-norm surges.
* Keras ``fit`` interrupted by an exception at the start of epoch 2 and run
  again in a new process with ``BackupAndRestore`` + ``XTTSLossBackup`` ends
  with the same model weights and loss state as an uninterrupted ``fit``;
  without ``XTTSLossBackup`` it does not (BackupAndRestore saves only the model
  and the optimizer).
"""

import json
import subprocess
import sys

import pytest

from child_env import child_env
from test_distribution import CHILD


def _start(tmp_path, name, mode, *args):
    out = tmp_path / f"{name}.json"
    proc = subprocess.Popen(
        [sys.executable, CHILD, mode, str(out), *args],
        env=child_env(),
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, out


def _finish(proc, out, timeout=120):
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
        pytest.fail(f"child timed out:\n{text[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"child failed (rc={proc.returncode}):\n{text[-6000:]}")
    with open(out) as f:
        return json.load(f)


def _run(tmp_path, name, mode, *args):
    return _finish(*_start(tmp_path, name, mode, *args))


def test_checkpoint_resume_in_new_process(tmp_path):
    ckpt = tmp_path / "ckpt"
    full_proc = _start(tmp_path, "full", "resume", "--start", "1", "--stop", "300")
    first = _run(tmp_path, "first", "resume", "--start", "1", "--stop", "150", "--save", str(ckpt))
    second = _run(
        tmp_path, "second", "resume", "--start", "151", "--stop", "300", "--restore", str(ckpt)
    )
    full = _finish(*full_proc)

    assert len(full["single"]) == 300 and len(second["single"]) == 150
    # The restored object holds exactly what the first process saved.
    assert second["restored_state"] == first["state"]
    assert first["single"] == full["single"][:150]
    # Every later step equals the uninterrupted run exactly.
    for a, b in zip(second["single"], full["single"][150:]):
        assert a == b, f"step {b['step']}: resumed {a} != uninterrupted {b}"
    assert second["state"] == full["state"]
    weights = [r["weight"] for r in full["single"]]
    changes = [i + 1 for i in range(1, 300) if weights[i] != weights[i - 1]]
    assert any(c < 150 for c in changes) and any(c > 150 for c in changes), changes
    st = full["state"]
    assert st["step_count:0"] == 300 and st["nonfinite_steps:0"] == 1 and st["spike_count:0"] >= 1
    assert st["gradient_norm_count:0"] == 300


def test_keras_backup_and_restore_resumes_loss_state(tmp_path):
    backup = tmp_path / "backup"
    args = ("--steps", "5", "--epochs", "4")
    full_proc = _start(tmp_path, "full", "keras_resume", *args)
    first = _run(
        tmp_path, "first", "keras_resume", *args, "--interrupt-at", "2", "--backup", str(backup)
    )
    assert first["interrupted"]
    assert first["state"]["step_count:0"] == 10
    assert "xtts_loss" in first["backup_files"]
    resumed = _run(tmp_path, "resumed", "keras_resume", *args, "--backup", str(backup))
    full = _finish(*full_proc)
    assert not resumed["interrupted"] and resumed["backup_files"] == []  # cleaned up
    assert full["state"]["step_count:0"] == 20 and full["state"]["weight_changes:0"] >= 1
    assert resumed["state"] == full["state"]
    assert resumed["weights"] == full["weights"]

    # Control: BackupAndRestore alone restores the model but not the loss.
    backup2 = tmp_path / "backup2"
    _run(
        tmp_path,
        "first2",
        "keras_resume",
        *args,
        "--interrupt-at",
        "2",
        "--backup",
        str(backup2),
        "--no-loss-backup",
    )
    alone = _run(
        tmp_path, "resumed2", "keras_resume", *args, "--backup", str(backup2), "--no-loss-backup"
    )
    assert alone["state"]["step_count:0"] == 10  # the loss restarted from scratch
    assert alone["state"] != full["state"]
