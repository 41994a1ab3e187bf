"""scripts/gpu_check.sh --dry-run: the GPU proof's script stays runnable.

No GPU here: the dry run checks what every step needs (files, CMake options,
kernel names of the SASS check, Python scripts, pytest collection of tests/gpu
and of the PyTorch subset), so a rename that would break the GPU run fails CI.
"""

import os
import subprocess
import sys

from child_env import TESTS_DIR, child_env

ROOT = os.path.dirname(TESTS_DIR)
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def _dry_run(**env):
    settings = dict(PYTHON=sys.executable, OUT="/nonexistent/never")
    settings.update(env)
    return subprocess.run(
        ["bash", SCRIPT, "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=child_env(**settings),
    )


def test_dry_run_passes():
    proc = _dry_run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run: 0 failure(s)" in proc.stdout
    for what in (
        "CMake option MYXTTS_BUILD_PYBIND",
        "pytest collects tests/gpu",
        "the PyTorch subset selects tests",
        "kernel forward_kernel",
        "kernel backward_kernel",
    ):
        assert f"ok    {what}" in proc.stdout, proc.stdout
    assert not os.path.exists("/nonexistent/never")  # a dry run writes nothing


def test_dry_run_fails_on_a_broken_setup():
    proc = _dry_run(PYTHON="/nonexistent/python3")
    assert proc.returncode > 0
    assert "FAIL  command /nonexistent/python3" in proc.stdout


def test_unknown_steps_and_arguments_are_errors():
    proc = _dry_run(GPU_CHECK_STEPS="build tset")
    assert proc.returncode == 2 and "unknown step 'tset'" in proc.stderr
    proc = subprocess.run(
        ["bash", SCRIPT, "--dryrun"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 2 and "unknown argument '--dryrun'" in proc.stderr
