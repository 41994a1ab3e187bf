"""Install and load: what the build asks for and pins, and the loader's errors
when the op library cannot be used (a shadowing source tree, an NVIDIA driver
older than the CUDA the kernels were built with, AutoGraph noise)."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types

import pytest

import myxtts_ops
from child_env import child_env
from myxtts_ops import _loader

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "build_backend"))
import cmake_tree  # noqa: E402
import tf_requirement  # noqa: E402


# ---------------------------------------------------------------------------
# Build requirements and wheel metadata


def _fake_distribution(site, name, version):
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_find_tensorflow_reads_the_given_site(tmp_path):
    assert tf_requirement.find_tensorflow([str(tmp_path)]) is None
    _fake_distribution(tmp_path, "tensorflow", "2.18.1")
    _fake_distribution(tmp_path, "numpy", "2.0.0")
    assert tf_requirement.find_tensorflow([str(tmp_path)]) == ("tensorflow", "2.18.1")


def test_build_requirement_is_the_installed_tensorflow_exactly():
    assert tf_requirement.build_requirement(("tensorflow", "2.19.1")) == "tensorflow==2.19.1"
    assert tf_requirement.build_requirement(("tensorflow-cpu", "2.16.2")) == "tensorflow-cpu==2.16.2"
    newest = "%d.%d" % tf_requirement.NEWEST_SUPPORTED
    assert tf_requirement.build_requirement(None) == f"tensorflow-cpu=={newest}.*"


def test_too_old_tensorflow_is_refused_by_name():
    with pytest.raises(tf_requirement.UnsupportedTensorFlowError, match=r"tensorflow 2\.15\.1"):
        tf_requirement.build_requirement(("tensorflow", "2.15.1"))
    assert tf_requirement.check_supported("tensorflow", "2.99.0") is not None
    assert tf_requirement.check_supported("tensorflow", "2.16.0") is None


def test_wheel_pins_the_built_minor_under_the_users_distribution():
    requires, extras = tf_requirement.wheel_requirements(
        ("tensorflow", "2.19.1"), ("tensorflow", "2.19.1"))
    assert requires == ["tensorflow==2.19.*"]
    # [cpu] keeps the user's (GPU) tensorflow instead of adding tensorflow-cpu over it.
    assert extras["cpu"] == ["tensorflow==2.19.*"]
    assert extras["gpu"] == ["tensorflow[and-cuda]==2.19.*"]
    requires, extras = tf_requirement.wheel_requirements(("tensorflow-cpu", "2.21.0"), None)
    assert requires == []
    assert extras["cpu"] == ["tensorflow-cpu==2.21.*"]


def test_installed_wheel_requires_the_installed_tensorflow_minor():
    try:
        requires = importlib.metadata.requires("myxtts-ops") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("myxtts-ops is not installed (source tree run)")
    installed = tf_requirement.find_tensorflow()
    assert installed is not None
    minor = "%d.%d" % tf_requirement.minor_of(installed[1])
    base = [r for r in requires if "extra ==" not in r]
    assert f"{installed[0]}=={minor}.*" in base, requires
    info = _loader.build_info()
    assert info is not None and info.TF_VERSION.startswith(minor + ".")


# ---------------------------------------------------------------------------
# CMake build trees: never reused once the tools they were configured with are gone


def _configured_tree(parent, tools):
    configuration = dict(cmake_tree.build_configuration({}), **tools)
    tree = parent / f"cmake-{cmake_tree.configuration_key(configuration)}"
    tree.mkdir(parents=True)
    (tree / cmake_tree.CONFIG_FILE).write_text(json.dumps(configuration))
    (tree / "CMakeCache.txt").write_text("")
    return tree, configuration


def test_build_tree_key_follows_the_tools(tmp_path):
    base = cmake_tree.build_configuration({"MYXTTS_OPS_CUDA": "off"})
    assert cmake_tree.configuration_key(base) == cmake_tree.configuration_key(dict(base))
    for field, value in [("ninja", "/tmp/pip-build-env-x/overlay/bin/ninja"),
                         ("tensorflow_version", "2.16.2"), ("cuda", "on"), ("cuda_archs", "90")]:
        changed = dict(base, **{field: value})
        assert cmake_tree.configuration_key(changed) != cmake_tree.configuration_key(base), field


def test_trees_of_deleted_build_environments_are_pruned(tmp_path):
    gone_env = tmp_path / "pip-build-env"
    (gone_env / "bin").mkdir(parents=True)
    for tool in ("cmake", "ninja"):
        (gone_env / "bin" / tool).write_text("")
    stale, _ = _configured_tree(tmp_path / "temp", {"cmake": str(gone_env / "bin" / "cmake"),
                                                    "ninja": str(gone_env / "bin" / "ninja")})
    shutil.rmtree(gone_env)  # pip deletes its isolated environment after the build
    live, _ = _configured_tree(tmp_path / "temp", {"cuda_archs": "90"})
    legacy = tmp_path / "temp" / "cmake"  # the unkeyed tree of earlier versions
    legacy.mkdir()
    current = tmp_path / "temp" / "cmake-current"
    cmake_tree.prune_build_trees(tmp_path / "temp", keep=current)
    assert not stale.exists() and not legacy.exists()
    assert live.exists()


# ---------------------------------------------------------------------------
# A source tree shadowing the installed copy


def test_missing_library_message_names_the_shadowed_copy(tmp_path):
    source = tmp_path / "checkout" / "myxtts_ops"
    source.mkdir(parents=True)
    installed = tmp_path / "site" / "myxtts_ops"
    (installed / "_lib").mkdir(parents=True)
    (installed / "_lib" / "_mel_loss_op.so").write_bytes(b"")
    search = [str(tmp_path / "checkout"), str(tmp_path / "site")]
    elsewhere = _loader.built_copies_elsewhere(str(source), search)
    assert elsewhere == [str(installed)]
    message = _loader.missing_library_message(str(source / "_lib" / "_mel_loss_op.so"), elsewhere)
    assert str(installed) in message and str(tmp_path / "checkout") in message
    assert "another directory" in message and "build_ext --inplace" in message
    plain = _loader.missing_library_message(str(source / "_lib" / "_mel_loss_op.so"), [])
    assert "Reinstall" in plain and "shadows" not in plain


def test_unbuilt_source_tree_in_the_current_directory_explains_itself(tmp_path):
    """`import myxtts_ops` from an unbuilt checkout while a built copy is installed."""
    built = os.path.dirname(os.path.abspath(myxtts_ops.__file__))
    if not os.path.exists(_loader._LIBRARY_FILE):
        pytest.skip("the imported myxtts_ops has no op library")
    shutil.copytree(built, tmp_path / "myxtts_ops",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = textwrap.dedent("""
        import myxtts_ops
        from myxtts_ops import _loader
        try:
            _loader.load_ops()
        except _loader.OpLibraryError as err:
            print(err)
        else:
            print("LOADED", _loader._LIBRARY_FILE)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shadows the built copy at " + built in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------
# CUDA driver against the CUDA the kernels were built with


def test_cuda_driver_mismatch_rule():
    message = _loader.cuda_driver_mismatch("13.0.88", (12, 4))
    assert "CUDA 13.0.88" in message and "CUDA 12.4" in message
    assert "MYXTTS_OPS_CUDA_HOME" in message and "driver" in message
    assert _loader.cuda_driver_mismatch("12.5.82", (12, 2)) is None  # minor version compatibility
    assert _loader.cuda_driver_mismatch("12.5.82", (13, 0)) is None
    assert _loader.cuda_driver_mismatch("12.5.82", None) is None  # no driver: CPU only
    assert _loader.cuda_driver_mismatch("", (11, 8)) is None  # no CUDA kernels


def test_driver_version_is_none_or_major_minor():
    version = _loader.driver_cuda_version()
    assert version is None or (len(version) == 2 and version[0] >= 10)


def test_load_refuses_a_driver_older_than_the_build(monkeypatch):
    fake = types.SimpleNamespace(TF_VERSION=_loader.build_info().TF_VERSION, CXX11_ABI=1,
                                 CUDA_ENABLED=True, CUDA_VERSION="13.0.88")
    monkeypatch.setattr(_loader, "build_info", lambda: fake)
    monkeypatch.setattr(_loader, "driver_cuda_version", lambda: (12, 8))
    with pytest.raises(_loader.OpLibraryError, match=r"CUDA 13\.0\.88.*CUDA 12\.8"):
        _loader._load()
    monkeypatch.setattr(_loader, "driver_cuda_version", lambda: None)
    assert _loader._load() is not None  # CPU-only machine: no check


# ---------------------------------------------------------------------------
# AutoGraph


def test_first_call_in_a_tf_function_prints_no_autograph_warning(tmp_path):
    code = textwrap.dedent("""
        import tensorflow as tf
        import myxtts_ops

        @tf.function
        def step(a, b):
            return myxtts_ops.masked_mel_loss(a, b).loss

        print(float(step(tf.ones([2, 3, 4]), tf.zeros([2, 3, 4]))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "1.0"
    assert "AutoGraph" not in proc.stderr, proc.stderr[-3000:]
