"""The CMake build tree of a build: keyed to what it builds, configured afresh
whenever the tools it was configured with moved.

pip's isolated builds run cmake, ninja, pybind11 and TensorFlow from a
temporary environment that is deleted afterwards; a CMakeCache.txt configured
there names tools that no longer exist. So the tree is keyed to what decides
the compiled code (interpreter, cmake version, generator, TensorFlow version,
CUDA compiler and architectures, options), and when the tools' locations
differ from those recorded, its configuration (CMakeCache.txt and CMake's
detection results) is discarded and CMake configures from scratch with the
current tools. The object files and ninja's logs stay: ninja recompiles only
what the new configuration compiles differently (the TensorFlow glue, whose
include paths moved), not the CUDA kernels. A stable environment
(--no-build-isolation, build_ext --inplace) keeps its configuration and
rebuilds incrementally. Used by setup.py; standard library only.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
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


# Where the tools are: recorded, not part of the key (pip's temporary
# environments move them on every isolated build).
# `python` is the interpreter as spelled (venv/bin/python and venv/bin/python3
# are one interpreter); `interpreter` (resolved, with its environment) is the key.
LOCATIONS = ("python", "cmake", "ninja", "tensorflow", "pybind11")


def _cmake_version(cmake):
    if not cmake:
        return None
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[0].split()[-1]


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec and spec.origin else None


def build_configuration(env):
    """What a configured CMake tree depends on."""
    cuda_mode = env.get("MYXTTS_OPS_CUDA", "auto").lower()
    cmake = _tool("cmake")
    ninja = _tool("ninja")
    return {
        "python": sys.executable,
        "interpreter": f"{os.path.realpath(sys.executable)} in {os.path.realpath(sys.prefix)}",
        "cmake": cmake,
        "cmake_version": _cmake_version(cmake),
        "ninja": ninja,
        "generator": "Ninja" if ninja else "Unix Makefiles",
        "tensorflow": _package_dir("tensorflow"),
        "tensorflow_version": (tf_requirement.find_tensorflow() or (None, None))[1],
        "pybind11": _package_dir("pybind11"),
        "cuda": cuda_mode,
        "cuda_compiler": None if cuda_mode == "off" else _cuda_compiler(),
        "cuda_archs": env.get("MYXTTS_OPS_CUDA_ARCHS", ""),
        "sanitize": env.get("MYXTTS_OPS_SANITIZE", "0"),
        "tf_op": env.get("MYXTTS_OPS_TF_OP", "1"),
    }


def configuration_key(configuration):
    identity = {k: v for k, v in configuration.items() if k not in LOCATIONS}
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recorded(tree):
    try:
        return json.loads((tree / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None


def forget_configuration(tree):
    """Drop CMake's cache and detection results (they name the old tools);
    keep object files and ninja's logs."""
    (tree / "CMakeCache.txt").unlink(missing_ok=True)
    files = tree / "CMakeFiles"
    if files.is_dir():
        for entry in files.iterdir():
            if entry.is_dir() and (
                entry.name[:1].isdigit()
                or entry.name in ("CheckCUDA", "CMakeScratch", "pkgRedirects")
            ):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name == "cmake.check_cache":
                entry.unlink(missing_ok=True)


def prune_build_trees(parent, keep, keep_configuration):
    """Delete the trees of interpreters or CUDA compilers that are gone (a
    deleted venv), trees without a record or with another version's record,
    and the unkeyed tree of earlier versions."""
    if not parent.is_dir():
        return
    for tree in parent.iterdir():
        if tree == keep or not tree.is_dir():
            continue
        if tree.name == "cmake":
            shutil.rmtree(tree, ignore_errors=True)
        elif tree.name.startswith("cmake-"):
            configuration = _recorded(tree)
            if (
                configuration is None
                or configuration.keys() != keep_configuration.keys()
                or any(
                    configuration.get(k) and not os.path.exists(configuration[k])
                    for k in ("python", "cuda_compiler")
                )
            ):
                shutil.rmtree(tree, ignore_errors=True)


def _same_tools(recorded, configuration):
    """Whether a tree configured as `recorded` can build `configuration` as is:
    the same everything, except the interpreter's spelling (`python` or
    `python3`: `interpreter` says whether it is the same one)."""
    if recorded is None:
        return False
    spelling = {"python"}
    return {k: v for k, v in recorded.items() if k not in spelling} == {
        k: v for k, v in configuration.items() if k not in spelling
    }


def prepare_build_tree(parent, configuration):
    """The build tree for `configuration` under `parent`, ready to configure."""
    parent = Path(parent)
    tree = parent / f"cmake-{configuration_key(configuration)}"
    prune_build_trees(parent, keep=tree, keep_configuration=configuration)
    if tree.is_dir() and not _same_tools(_recorded(tree), configuration):
        forget_configuration(tree)
    tree.mkdir(parents=True, exist_ok=True)
    (tree / CONFIG_FILE).write_text(json.dumps(configuration, indent=1, sort_keys=True))
    return tree
