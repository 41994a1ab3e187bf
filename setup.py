"""Build of myxtts-ops: setuptools drives CMake, which compiles the CPU (and,
when nvcc is found, CUDA) kernels, the TensorFlow op library and the pybind11
module, then places them in the myxtts_ops package.

Environment:
  MYXTTS_OPS_CUDA        auto (default: build CUDA when nvcc is found) | on | off
  MYXTTS_OPS_CUDA_ARCHS  CMake CUDA architectures (default 75-real;...;90)
  MYXTTS_OPS_SANITIZE    1: AddressSanitizer + UBSan build (for tests only)
  MYXTTS_OPS_TF_OP       0: skip the TF op library (pybind module only, no TF needed)
  MYXTTS_OPS_BUILD_JOBS  parallel build jobs
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = Path(self.build_temp).resolve() / "cmake"
        out_dir = build_dir / "out"
        env = os.environ
        args = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DMYXTTS_OPS_CUDA={env.get('MYXTTS_OPS_CUDA', 'auto')}",
            f"-DMYXTTS_OUTPUT_DIR={out_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if env.get("MYXTTS_OPS_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={env['MYXTTS_OPS_CUDA_ARCHS']}")
        if env.get("MYXTTS_OPS_SANITIZE", "0") not in ("", "0"):
            args.append("-DMYXTTS_SANITIZE=ON")
        if env.get("MYXTTS_OPS_TF_OP", "1") in ("0", "off", "OFF"):
            args.append("-DMYXTTS_BUILD_TF_OP=OFF")
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            args += ["-G", "Ninja"]
        subprocess.run(args, check=True)
        jobs = env.get("MYXTTS_OPS_BUILD_JOBS") or str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)

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
        for name in ("_mel_loss_op.so", "_build_info.py"):
            if (out_dir / name).exists():
                shutil.copy2(out_dir / name, lib_dir / name)


packages = find_packages(include=["myxtts_ops", "myxtts_ops.*"])
packages += ["myxtts"] + [f"myxtts.{p}" for p in find_packages(where="python/myxtts")]
packages += ["myxtts_loss"]

setup(
    packages=packages,
    package_dir={"myxtts_ops": "myxtts_ops", "myxtts": "python/myxtts", "myxtts_loss": "python/myxtts_loss"},
    package_data={"myxtts_ops": ["_lib/*.so", "_lib/_build_info.py"]},
    ext_modules=[CMakeExtension("myxtts_ops.kernels")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
