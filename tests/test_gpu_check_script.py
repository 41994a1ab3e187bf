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


def test_pybind_only_build_takes_the_ffi_handlers_from_jaxlib(tmp_path):
    """The GPU machine has no TensorFlow: the check's build (kernels module
    only) must still export the XLA FFI handlers, with jaxlib's headers."""
    import importlib.util
    import shutil

    import pytest

    for need in ("jax", "pybind11"):
        if importlib.util.find_spec(need) is None:
            pytest.skip(f"{need} is not installed")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH")
    build = tmp_path / "build"
    configure = [
        "cmake", "-S", ROOT, "-B", str(build), "-DMYXTTS_BUILD_TF_OP=OFF",
        "-DMYXTTS_BUILD_PYBIND=ON", "-DMYXTTS_OPS_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]  # fmt: skip
    logs = []
    for cmd in (configure, ["cmake", "--build", str(build), "-j", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        logs.append(proc.stdout)
    assert "kernels module FFI handlers from '" in logs[0] and "jaxlib" in logs[0], logs[0]
    (so,) = build.rglob("kernels*.so")
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('kernels', {str(so)!r})\n"
        "k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k)\n"
        "print(sorted(k.ffi_targets()), sorted(k.ffi_targets()['cpu']))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "['cpu'] ['myxtts_ops_check_lengths', 'myxtts_ops_masked_mel_loss', "
        "'myxtts_ops_masked_mel_loss_grad']"
    )
