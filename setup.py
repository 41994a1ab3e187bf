"""Build of myxtts-ops: setuptools drives CMake, which compiles the CPU (and,
when nvcc is found, CUDA) kernels, the TensorFlow op library and the pybind11
module, then places them in the myxtts_ops package.

Environment:
  MYXTTS_OPS_CUDA        auto (default: build CUDA when nvcc is found) | on | off
  MYXTTS_OPS_CUDA_HOME   CUDA toolkit to build with (its bin/nvcc); else CUDACXX, else
                         nvcc on PATH. Use a toolkit of TensorFlow's CUDA major (12).
  MYXTTS_OPS_CUDA_ARCHS  CMake CUDA architectures (default 75-real;...;90)
  MYXTTS_OPS_SANITIZE    1: AddressSanitizer + UBSan build (for tests only)
  MYXTTS_OPS_TF_OP       0: skip the TF op library (pybind module only, no TF needed)
  MYXTTS_OPS_BUILD_JOBS  parallel build jobs

The CMake build tree lives in build/temp*/cmake-<key>, keyed to what decides
the compiled code; it is configured afresh whenever the tools it was
configured with moved (pip's isolated builds), see build_backend/cmake_tree.py.

Developer loop: `python setup.py build_ext --inplace` (or `pip install
--no-build-isolation -e .`) puts the op library, the build record and the
kernels module in the source tree's myxtts_ops/.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import setuptools
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# pyproject.toml's license is an SPDX string, which setuptools reads from 77 on
# (older ones refuse the file with a schema error naming no fix). pip's isolated
# build gets a new one; --no-build-isolation and build_ext use the environment's.
_MIN_SETUPTOOLS = 77
if int(setuptools.__version__.split(".")[0]) < _MIN_SETUPTOOLS:
    sys.exit(
        f"myxtts-ops needs setuptools>={_MIN_SETUPTOOLS} to build, this environment has "
        f"{setuptools.__version__}: pip install 'setuptools>={_MIN_SETUPTOOLS}'"
    )

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "build_backend"))
import tf_requirement  # noqa: E402
from cmake_tree import build_configuration, prepare_build_tree  # noqa: E402

# What the CMake build writes into myxtts_ops/_lib/ besides the kernels module:
# the op library, the build record and the state layout generated from
# csrc/kernels/mel_loss_math.h.
_LIB_FILES = ("_mel_loss_op.so", "_build_info.py", "_state_layout.py")


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        env = os.environ
        configuration = build_configuration(env)
        build_dir = prepare_build_tree(Path(self.build_temp).resolve(), configuration)
        out_dir = build_dir / "out"
        args = [
            configuration["cmake"] or "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DMYXTTS_OPS_CUDA={env.get('MYXTTS_OPS_CUDA', 'auto')}",
            f"-DMYXTTS_OUTPUT_DIR={out_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if configuration["cuda_compiler"]:
            args.append(f"-DCMAKE_CUDA_COMPILER={configuration['cuda_compiler']}")
        if env.get("MYXTTS_OPS_CUDA_HOME"):
            args.append(f"-DCUDAToolkit_ROOT={env['MYXTTS_OPS_CUDA_HOME']}")
        if configuration["tensorflow_version"]:
            installed = tf_requirement.find_tensorflow()
            cuda_major = tf_requirement.cuda_major_of_tensorflow(installed[0])
            if cuda_major:
                args.append(f"-DMYXTTS_TF_CUDA_MAJOR={cuda_major}")
        if env.get("MYXTTS_OPS_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={env['MYXTTS_OPS_CUDA_ARCHS']}")
        if env.get("MYXTTS_OPS_SANITIZE", "0") not in ("", "0"):
            args.append("-DMYXTTS_SANITIZE=ON")
        if env.get("MYXTTS_OPS_TF_OP", "1") in ("0", "off", "OFF"):
            args.append("-DMYXTTS_BUILD_TF_OP=OFF")
        if configuration["ninja"]:
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={configuration['ninja']}"]
        subprocess.run(args, check=True)
        jobs = env.get("MYXTTS_OPS_BUILD_JOBS") or str(os.cpu_count() or 2)
        subprocess.run(
            [configuration["cmake"] or "cmake", "--build", str(build_dir), "--parallel", jobs],
            check=True,
        )

        # kernels*.so goes where setuptools expects the extension; the op
        # library and the build record go to myxtts_ops/_lib/.
        kernels_dest = Path(self.get_ext_fullpath(ext.name))
        kernels_dest.parent.mkdir(parents=True, exist_ok=True)
        built = list(out_dir.glob("kernels*.so"))
        if not built:
            raise RuntimeError(f"CMake did not produce the kernels module in {out_dir}")
        shutil.copy2(built[0], kernels_dest)
        lib_dir = kernels_dest.parent / "_lib"
        lib_dir.mkdir(exist_ok=True)
        for name in _LIB_FILES:
            if (out_dir / name).exists():
                shutil.copy2(out_dir / name, lib_dir / name)

    def copy_extensions_to_source(self):
        """--inplace / editable: setuptools copies the kernels module into the
        source package; the op library and the build record go with it."""
        super().copy_extensions_to_source()
        package_dir = Path(self.get_finalized_command("build_py").get_package_dir("myxtts_ops"))
        built_lib = Path(self.build_lib) / "myxtts_ops" / "_lib"
        for name in _LIB_FILES:
            if (built_lib / name).exists():
                (package_dir / "_lib").mkdir(exist_ok=True)
                shutil.copy2(built_lib / name, package_dir / "_lib" / name)


def _requirements():
    """install_requires (no TensorFlow) and extras: cpu/gpu name the TensorFlow
    minor this build compiles against (cpu: under the distribution the target
    environment has)."""
    base = ["numpy>=1.24", "matplotlib>=3.7", "ml_dtypes>=0.3"]
    # The build tools let the test tooling rebuild instrumented copies (scripts/sanitize_cpu.sh).
    # jax: the XLA FFI handlers run through JAX as well (tests/test_ffi_jax.py).
    test = [
        "pytest>=8",
        "hypothesis>=6",
        "psutil",
        "cmake>=3.24",
        "ninja",
        "pybind11>=2.12",
        "jax>=0.5",
    ]
    built_against = tf_requirement.find_tensorflow()
    if built_against is None:
        # No TensorFlow in this build (e.g. the metadata pass before the
        # requirements are installed, or MYXTTS_OPS_TF_OP=0).
        newest = "%d.%d" % tf_requirement.NEWEST_SUPPORTED
        built_against = (tf_requirement.FALLBACK_DISTRIBUTION, newest)
        installed = None
    else:
        installed = tf_requirement.find_tensorflow(tf_requirement.target_site_paths())
    requires, extras = tf_requirement.wheel_requirements(built_against, installed)
    return base + requires, {**extras, "test": test}


install_requires, extras_require = _requirements()

packages = find_packages(include=["myxtts_ops", "myxtts_ops.*"])
packages += ["myxtts"] + [f"myxtts.{p}" for p in find_packages(where="python/myxtts")]
packages += ["myxtts_loss"]

setup(
    packages=packages,
    package_dir={
        "myxtts_ops": "myxtts_ops",
        "myxtts": "python/myxtts",
        "myxtts_loss": "python/myxtts_loss",
    },
    package_data={"myxtts_ops": [f"_lib/{name}" for name in _LIB_FILES]},
    install_requires=install_requires,
    extras_require=extras_require,
    ext_modules=[CMakeExtension("myxtts_ops.kernels")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
