"""Code generation of the CUDA kernels, checked without a GPU: every kernel
moves data with 16-byte vector instructions and uses no local memory (the
float64 Huber forward is allowed the few spill bytes ptxas gives it)."""

import os
import shutil
import sys

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
)

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


@pytest.fixture(scope="module")
def kernels():
    import cuda_codegen_report

    return {k["name"]: k for k in cuda_codegen_report.report("sm_90")}


def test_every_kernel_instantiation_is_present(kernels):
    expected = {
        f"{kind}<{dtype},{loss}>"
        for kind in ("forward", "backward")
        for dtype in ("float16", "bfloat16", "float32", "float64")
        for loss in ("l1", "huber")
    }
    assert set(kernels) == expected


def test_sixteen_byte_loads_everywhere(kernels):
    for name, k in kernels.items():
        loads = [op for op in k["vector_memory_ops"] if op.startswith("ld.")]
        assert loads, f"{name}: no vector loads"
        for op in loads:
            vec, elem = op.split(".")[1], op.split(".")[2]
            assert int(vec[1]) * int(elem[1:]) // 8 == 16, f"{name}: {op} is not 16 bytes"
        if name.startswith("backward"):
            assert any(op.startswith("st.") for op in k["vector_memory_ops"]), name


def test_no_local_memory(kernels):
    for name, k in kernels.items():
        assert k["ptx_local_refs"] == 0, name
        if "float64,huber" not in name:
            assert k["spill_stores"] == 0 and k["stack_bytes"] == 0, (name, k)
