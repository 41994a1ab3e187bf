"""Rules of the framework-free kernel sources (csrc/kernels), checked on the text.

- No framework header: the kernels are shared by the TF OpKernels, the XLA FFI
  handlers and the pybind11 module, each a thin layer around them.
- No iostream: the pybind11 module built on the GPU machine links libstdc++
  statically, and an ostream insertion in its argument checks crashed the
  process there (mel_loss_checks.cc builds its messages with std::to_string).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "csrc" / "kernels"
SOURCES = sorted(p for p in KERNELS.iterdir() if p.suffix in {".h", ".cc", ".cu", ".cuh"})
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)
FRAMEWORK = ("tensorflow/", "xla/", "pybind11/", "absl/", "Eigen/", "unsupported/Eigen")
IOSTREAMS = {"iostream", "sstream", "ostream", "istream", "fstream", "strstream"}


def test_the_kernel_sources_are_found():
    names = {p.name for p in SOURCES}
    assert {"mel_loss_checks.cc", "mel_loss_cuda.cu", "stop_loss_cpu.cc"} <= names


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_framework_header_and_no_iostream(source):
    text = source.read_text()
    includes = INCLUDE.findall(text)
    assert includes, f"{source.name}: no #include found (pattern out of date?)"
    framework = [h for h in includes if h.startswith(FRAMEWORK)]
    assert not framework, f"{source.name} includes framework headers {framework}"
    streams = [h for h in includes if h in IOSTREAMS]
    assert not streams, f"{source.name} includes {streams}"
    assert "std::cout" not in text and "stringstream" not in text
