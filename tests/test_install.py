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
    assert (
        tf_requirement.build_requirement(("tensorflow-cpu", "2.16.2")) == "tensorflow-cpu==2.16.2"
    )
    newest = "%d.%d" % tf_requirement.NEWEST_SUPPORTED
    assert tf_requirement.build_requirement(None) == f"tensorflow-cpu=={newest}.*"


def test_too_old_tensorflow_is_refused_by_name():
    with pytest.raises(tf_requirement.UnsupportedTensorFlowError, match=r"tensorflow 2\.15\.1"):
        tf_requirement.build_requirement(("tensorflow", "2.15.1"))
    assert tf_requirement.check_supported("tensorflow", "2.99.0") is not None
    assert tf_requirement.check_supported("tensorflow", "2.16.0") is None


def test_wheel_pins_the_built_minor_only_in_its_extras():
    requires, extras = tf_requirement.wheel_requirements(
        ("tensorflow", "2.19.1"), ("tensorflow", "2.19.1")
    )
    # No base requirement: a wheel built beside tensorflow-cpu must not install
    # tensorflow-cpu over a machine's CUDA tensorflow (or the reverse).
    assert requires == []
    # [cpu] keeps the user's (GPU) tensorflow instead of adding tensorflow-cpu over it.
    assert extras["cpu"] == ["tensorflow==2.19.*"]
    assert extras["gpu"] == ["tensorflow[and-cuda]==2.19.*"]
    requires, extras = tf_requirement.wheel_requirements(("tensorflow-cpu", "2.21.0"), None)
    assert requires == []
    assert extras["cpu"] == ["tensorflow-cpu==2.21.*"]


def test_installed_wheel_names_tensorflow_only_in_its_extras():
    try:
        requires = importlib.metadata.requires("myxtts-ops") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("myxtts-ops is not installed (source tree run)")
    installed = tf_requirement.find_tensorflow()
    assert installed is not None
    minor = "%d.%d" % tf_requirement.minor_of(installed[1])
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in base if r.startswith("tensorflow")], requires
    cpu = [r for r in requires if 'extra == "cpu"' in r]
    assert any(r.startswith(f"{installed[0]}=={minor}.*") for r in cpu), requires
    info = _loader.build_info()
    assert info is not None and info.TF_VERSION.startswith(minor + ".")


# ---------------------------------------------------------------------------
# CMake build trees: configured afresh when their tools moved, pruned when gone


def test_installed_wheel_states_its_license_as_an_spdx_expression():
    metadata = importlib.metadata.metadata("myxtts-ops")
    assert metadata.get("License-Expression") == "Apache-2.0"


def test_setup_py_names_the_setuptools_it_needs(tmp_path):
    """setuptools before 77 refuses pyproject.toml's SPDX license string with a
    schema error that names no fix; setup.py says which version it needs
    before that (a stub setuptools 65 stands in for an old environment's)."""
    stub = tmp_path / "setuptools"
    (stub / "command").mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "__version__ = '65.5.0'\n"
        "class Extension:\n    pass\n"
        "def find_packages(*a, **k):\n    return []\n"
        "def setup(**k):\n    raise AssertionError('setup() reached')\n"
    )
    (stub / "command" / "__init__.py").write_text("")
    (stub / "command" / "build_ext.py").write_text("class build_ext:\n    pass\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, os.path.join(_ROOT, "setup.py"), "--version"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "myxtts-ops needs setuptools>=77 to build, this environment has 65.5.0" in proc.stderr
    assert "setup() reached" not in proc.stderr


def test_build_tree_key_follows_what_is_compiled_not_where_the_tools_are():
    base = cmake_tree.build_configuration({"MYXTTS_OPS_CUDA": "off"})
    key = cmake_tree.configuration_key(base)
    for field in cmake_tree.LOCATIONS:  # pip's temporary environments move these
        moved = dict(base, **{field: f"/tmp/pip-build-env-x/overlay/{field}"})
        assert cmake_tree.configuration_key(moved) == key, field
    for field in (
        "interpreter",
        "cmake_version",
        "generator",
        "tensorflow_version",
        "cuda",
        "cuda_compiler",
        "cuda_archs",
        "sanitize",
        "tf_op",
    ):
        changed = dict(base, **{field: f"not the current {field}"})
        assert cmake_tree.configuration_key(changed) != key, field


def test_build_tree_key_same_for_each_spelling_of_the_interpreter(monkeypatch, tmp_path):
    """`python setup.py` and `pip` (venv/bin/python3) share one build tree."""
    real = os.path.realpath(sys.executable)
    keys = set()
    for name in ("python", "python3"):
        link = tmp_path / name
        link.symlink_to(real)
        monkeypatch.setattr(sys, "executable", str(link))
        keys.add(cmake_tree.configuration_key(cmake_tree.build_configuration({})))
    assert len(keys) == 1
    # Nor is the configured tree discarded when the other spelling builds next.
    configurations = []
    for name in ("python", "python3"):
        monkeypatch.setattr(sys, "executable", str(tmp_path / name))
        configurations.append(cmake_tree.build_configuration({"MYXTTS_OPS_CUDA": "off"}))
    tree = cmake_tree.prepare_build_tree(tmp_path / "build", configurations[0])
    (tree / "CMakeCache.txt").write_text("kept")
    assert cmake_tree.prepare_build_tree(tmp_path / "build", configurations[1]) == tree
    assert (tree / "CMakeCache.txt").read_text() == "kept"


def _configured(tree, configuration):
    (tree / "CMakeFiles" / "4.0.0").mkdir(parents=True)
    (tree / "CMakeFiles" / "mel_loss_kernels.dir").mkdir()
    (tree / "CMakeFiles" / "mel_loss_kernels.dir" / "mel_loss_cuda.cu.o").write_bytes(b"obj")
    (tree / "CMakeCache.txt").write_text("CMAKE_MAKE_PROGRAM:FILEPATH=/gone/ninja\n")
    (tree / ".ninja_log").write_text("")
    (tree / cmake_tree.CONFIG_FILE).write_text(json.dumps(configuration))


def test_tree_of_a_deleted_build_environment_is_configured_afresh(tmp_path):
    """pip install . twice: the second build must not use the first one's CMakeCache
    (its ninja is gone), but keeps the compiled objects."""
    now = cmake_tree.build_configuration({"MYXTTS_OPS_CUDA": "off"})
    before = dict(now, ninja="/tmp/pip-build-env-gone/overlay/bin/ninja")
    tree = tmp_path / f"cmake-{cmake_tree.configuration_key(now)}"
    _configured(tree, before)
    assert cmake_tree.prepare_build_tree(tmp_path, now) == tree
    assert not (tree / "CMakeCache.txt").exists()
    assert not (tree / "CMakeFiles" / "4.0.0").exists()
    assert (tree / "CMakeFiles" / "mel_loss_kernels.dir" / "mel_loss_cuda.cu.o").exists()
    assert (tree / ".ninja_log").exists()
    assert json.loads((tree / cmake_tree.CONFIG_FILE).read_text()) == now
    # Same tools again: the configuration stays (incremental developer builds).
    (tree / "CMakeCache.txt").write_text("kept")
    cmake_tree.prepare_build_tree(tmp_path, now)
    assert (tree / "CMakeCache.txt").read_text() == "kept"


def test_trees_of_deleted_interpreters_are_pruned(tmp_path):
    now = cmake_tree.build_configuration({"MYXTTS_OPS_CUDA": "off"})
    deleted = tmp_path / "deleted-venv"
    gone = dict(now, python=str(deleted / "bin" / "python"))
    gone["interpreter"] = f"{gone['python']} in {deleted}"
    stale = tmp_path / f"cmake-{cmake_tree.configuration_key(gone)}"
    _configured(stale, gone)
    other = dict(now, cuda_archs="90")
    live = tmp_path / f"cmake-{cmake_tree.configuration_key(other)}"
    _configured(live, other)
    legacy = tmp_path / "cmake"  # the unkeyed tree of earlier versions
    legacy.mkdir()
    cmake_tree.prepare_build_tree(tmp_path, now)
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
    shutil.copytree(
        built, tmp_path / "myxtts_ops", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
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
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    fake = types.SimpleNamespace(
        TF_VERSION=_loader.build_info().TF_VERSION,
        CXX11_ABI=1,
        CUDA_ENABLED=True,
        CUDA_VERSION="13.0.88",
    )
    monkeypatch.setattr(_loader, "build_info", lambda: fake)
    monkeypatch.setattr(_loader, "driver_cuda_version", lambda: (12, 8))
    with pytest.raises(_loader.OpLibraryError, match=r"CUDA 13\.0\.88.*CUDA 12\.8"):
        _loader._load()
    monkeypatch.setattr(_loader, "driver_cuda_version", lambda: None)
    assert _loader._load() is not None  # CPU-only machine: no check


def test_op_library_has_xla_custom_calls_where_tensorflow_ships_their_header():
    """The README's promise: TensorFlow 2.20 and newer ship XLA's C++ FFI header
    (with the tf2xla headers and libtensorflow_cc: CMake's condition), and a
    build against one has the custom calls (jit_compile=True runs the fused
    op); 2.16 to 2.19 do not ship it, and the build falls back."""
    import tensorflow as tf

    tf_dir = tf.sysconfig.get_lib()
    include = tf.sysconfig.get_include()
    has_headers = all(
        os.path.exists(os.path.join(include, *path.split("/")))
        for path in ("tensorflow/compiler/tf2xla/xla_op_kernel.h", "xla/ffi/api/ffi.h")
    ) and os.path.exists(os.path.join(tf_dir, "libtensorflow_cc.so.2"))
    minor = tuple(int(p) for p in tf.__version__.split(".")[:2])
    assert has_headers == (minor >= (2, 20)), (tf.__version__, has_headers)
    reason = _loader.xla_unavailable_reason()
    if has_headers:
        assert reason is None
    else:
        assert "no XLA custom calls" in reason


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
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "1.0"
    assert "AutoGraph" not in proc.stderr, proc.stderr[-3000:]
