"""The one CuPy/PyTorch array backend (myxtts_ops.array_backend) and the GPU
scripts that use it, on a machine without a GPU: backend selection and its
errors, the host-side conversions, and that tests/gpu, the sanitizer driver
and the GPU benchmark still import and skip cleanly."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from child_env import TESTS_DIR, child_env
from myxtts_ops import array_backend, gpu
from myxtts_ops.array_backend import BackendUnavailable, backend_for, load_backend

ROOT = os.path.dirname(TESTS_DIR)


def _importable(name):
    return importlib.util.find_spec(name) is not None


NO_CUDA_LIBRARY = not (_importable("cupy") or _importable("torch"))


def test_unknown_backend_name_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"unknown array backend 'numpy'; choose from cupy, torch"):
        load_backend("numpy")
    with pytest.raises(ValueError, match="'jax'"):
        load_backend(prefer=("torch", "jax"))


@pytest.mark.skipif(not NO_CUDA_LIBRARY, reason="CuPy or PyTorch is installed here")
def test_no_library_gives_every_reason():
    with pytest.raises(BackendUnavailable) as exc:
        load_backend()
    msg = str(exc.value)
    assert "cupy unavailable (ModuleNotFoundError" in msg
    assert "torch unavailable (ModuleNotFoundError" in msg
    with pytest.raises(BackendUnavailable, match=r"^torch unavailable"):
        load_backend("torch")


def test_backend_for_rejects_host_arrays():
    with pytest.raises(TypeError, match=r"numpy\.ndarray.*myxtts_ops\.kernels\.forward"):
        backend_for(np.zeros(3))
    # gpu.forward picks its backend from y_true first, before touching the kernels.
    with pytest.raises(TypeError, match="CuPy array or a PyTorch CUDA tensor"):
        gpu.forward(np.zeros((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.float32))


def test_host_conversions_reinterpret_bit_patterns_and_convert_values():
    bits = np.array([0x3F80, 0xBF80], np.uint16)  # bfloat16 1.0, -1.0
    as_int16 = bits.view(np.int16)
    np.testing.assert_array_equal(array_backend._host_as(as_int16, "uint16"), bits)
    np.testing.assert_array_equal(
        array_backend._host_as(np.array([1, 2], np.int32), "float64"), np.array([1.0, 2.0])
    )
    same = np.zeros(2, np.float32)
    assert array_backend._host_as(same, "float32") is same
    assert array_backend._host_as(same, None) is same


def test_gpu_module_leaves_validation_to_the_kernels_module():
    """gpu.py once validated loss settings itself, with rules that let inf through;
    the kernels module's checks (the same on the CPU path) are the only ones."""
    from myxtts_ops import kernels

    assert not hasattr(gpu, "_check_config")
    a = np.zeros((1, 2, 3), np.float32)
    for delta in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="huber_delta"):
            kernels.forward(
                a, a, None, np.zeros(kernels.STATE_SIZE), loss_type="huber", huber_delta=delta
            )


def _run(argv, timeout=180):
    return subprocess.run(
        argv, capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout
    )


def test_gpu_suite_collects_and_skips_cleanly():
    # -P: the installed package, not the source tree in the working directory.
    proc = _run(
        [sys.executable, "-P", "-m", "pytest", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert " error" not in out.lower()
    summary = out.strip().splitlines()[-1]
    skipped = int(summary.split(" skipped")[0].split()[-1])
    assert skipped > 200, summary  # every kernel test collected, then skipped


@pytest.mark.parametrize("script", ["scripts/sanitize_driver.py", "benchmarks/gpu_bench.py"])
def test_gpu_scripts_import_and_skip_without_a_gpu(script):
    proc = _run([sys.executable, script], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": SKIP: " in proc.stdout
