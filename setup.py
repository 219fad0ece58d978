"""pip install --no-build-isolation [-e] .   builds manifold_mixup._C with CMakeLists.txt.

The native build has one description, CMakeLists.txt; this file only drives it, against the
torch already installed in the running Python (CPU-only or CUDA).
Environment: MM_CMAKE_BUILD_DIR (default build/pip), MM_BUILD_TESTS (default OFF),
MM_BUILD_TYPE (default Release), MAX_JOBS (parallel compile jobs).
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
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        # An editable install (and `make build`, which shares its CMake build directory)
        # keeps the module in the source tree; setuptools gets a copy where it looks.
        editable = self.inplace or getattr(self, "editable_mode", False)
        out_dir = ROOT / "python" / "manifold_mixup" if editable else target.parent
        build_dir = Path(os.environ.get("MM_CMAKE_BUILD_DIR", ROOT / "build" / "pip")).resolve()
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call([
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MM_BUILD_TYPE', 'Release')}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DMM_PYTHON_OUTPUT_DIR={out_dir}",
            f"-DMM_BUILD_TESTS={os.environ.get('MM_BUILD_TESTS', 'OFF')}",
        ])
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "mm_python",
                               "-j", jobs])
        built = out_dir / target.name
        if built != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)


setup(
    name="manifold-mixup",
    version="0.1.0",
    description="Manifold Mixup for PyTorch and fastai, mixing in native code on libtorch",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension("manifold_mixup._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={"fastai": ["fastai>=2.7"]},
    zip_safe=False,
)
