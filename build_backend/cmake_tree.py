"""The CMake build tree of a build, keyed to what it was configured with.

pip's isolated builds run cmake, ninja and TensorFlow from a temporary
environment that is deleted afterwards; a CMakeCache.txt configured there names
tools that no longer exist, so a tree is never reused under another
configuration: each configuration gets its own directory, and trees whose tools
are gone are deleted. A stable environment keeps its key and rebuilds
incrementally. Used by setup.py; standard library only.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import tf_requirement

CONFIG_FILE = "myxtts-configuration.json"


def _tool(name):
    path = shutil.which(name)
    return os.path.realpath(path) if path else None


def _cuda_compiler():
    """The nvcc the build uses: MYXTTS_OPS_CUDA_HOME/bin/nvcc, CUDACXX, or PATH's."""
    home = os.environ.get("MYXTTS_OPS_CUDA_HOME")
    if home:
        nvcc = Path(home) / "bin" / "nvcc"
        if not nvcc.exists():
            raise RuntimeError(f"MYXTTS_OPS_CUDA_HOME={home} has no bin/nvcc")
        return str(nvcc)
    return os.environ.get("CUDACXX") or _tool("nvcc")


def build_configuration(env):
    """Everything a configured CMake tree depends on: a change means a new tree."""
    spec = importlib.util.find_spec("tensorflow")
    cuda_mode = env.get("MYXTTS_OPS_CUDA", "auto").lower()
    return {
        "python": sys.executable,
        "cmake": _tool("cmake"),
        "ninja": _tool("ninja"),
        "tensorflow": os.path.dirname(spec.origin) if spec and spec.origin else None,
        "tensorflow_version": (tf_requirement.find_tensorflow() or (None, None))[1],
        "cuda": cuda_mode,
        "cuda_compiler": None if cuda_mode == "off" else _cuda_compiler(),
        "cuda_archs": env.get("MYXTTS_OPS_CUDA_ARCHS", ""),
        "sanitize": env.get("MYXTTS_OPS_SANITIZE", "0"),
        "tf_op": env.get("MYXTTS_OPS_TF_OP", "1"),
    }


def configuration_key(configuration):
    text = json.dumps(configuration, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tools_gone(configuration):
    paths = [configuration.get(k) for k in ("python", "cmake", "ninja", "tensorflow",
                                            "cuda_compiler")]
    return any(p and not os.path.exists(p) for p in paths)


def prune_build_trees(parent, keep):
    """Delete CMake trees configured with tools that no longer exist (pip's deleted
    isolated environments), and the unkeyed tree of earlier versions."""
    if not parent.is_dir():
        return
    for tree in parent.iterdir():
        if tree == keep or not tree.is_dir():
            continue
        if tree.name == "cmake":
            shutil.rmtree(tree, ignore_errors=True)
        elif tree.name.startswith("cmake-"):
            try:
                configuration = json.loads((tree / CONFIG_FILE).read_text())
            except (OSError, ValueError):
                configuration = None
            if configuration is None or _tools_gone(configuration):
                shutil.rmtree(tree, ignore_errors=True)


