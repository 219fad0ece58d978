"""pip install --no-build-isolation [-e] .   builds manifold_mixup with CMakeLists.txt.

The native build has one description, CMakeLists.txt; this file only drives it, against the
torch already installed in the running Python (CPU-only or CUDA). The package it makes holds the
Python extension and, beside it, the C library, its header, dlpack.h, the CMake package and the
pkg-config file (`python -m manifold_mixup --cmakedir` prints where). Its requirement on torch is
the release series it was compiled against (`torch==2.13.*`): libtorch's C++ ABI changes between
series.

Environment: MM_CMAKE_BUILD_DIR (default build/pip; an existing build directory is reused as it
is configured), MM_BUILD_TESTS, MM_BUILD_TYPE and MM_CCACHE (passed on to CMake when set), MAX_JOBS
(parallel compile jobs, default: the CPU count). Ninja builds when it is found (Debian's
ninja-build, or `pip install ninja`), ccache is used when installed (MM_CCACHE=OFF turns it off).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "python" / "manifold_mixup"
VERSION = re.search(r'^__version__ = "([^"]+)"$', (PACKAGE / "_version.py").read_text(), re.M)[1]
WHEEL_COMMANDS = {"bdist_wheel", "dist_info", "editable_wheel"}
BUILD_DIR = Path(os.environ.get("MM_CMAKE_BUILD_DIR", ROOT / "build" / "pip")).resolve()


def fail(message):
    sys.exit(f"\nmanifold-mixup: {message}\n")


def has_bdist_wheel():
    try:
        from setuptools.command.bdist_wheel import bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        try:
            from wheel.bdist_wheel import bdist_wheel  # noqa: F401  (wheel < 0.46)
        except ImportError:
            return False
    return True


# pip builds a wheel even to install; with --no-build-isolation it installs nothing for the build,
# and a new virtualenv's setuptools (65 on Python 3.11) cannot make one without the `wheel`
# package. Say so before anything compiles, instead of "invalid command 'bdist_wheel'".
if WHEEL_COMMANDS & set(sys.argv) and not has_bdist_wheel():
    import setuptools
    fail(f"the setuptools in this environment ({setuptools.__version__}, {Path(setuptools.__file__).parent}) "
         "cannot build a wheel, which pip needs to install this package, and with "
         "--no-build-isolation pip installs no build requirements. Upgrade setuptools in this "
         "environment (70.1 and newer build wheels; torch itself asks for 77.0.3 or newer), then "
         f"run the same pip command again:\n    {sys.executable} -m pip install --upgrade setuptools\n")

try:
    import torch
except ImportError:
    fail(f"{sys.executable} cannot import torch. This package is compiled against the torch "
         "already installed in the Python that builds it: install torch first, then install with "
         "`pip install --no-build-isolation ...` (pip's isolated build environment has no torch).")
TORCH_SERIES = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def cmake_cache(build_dir):
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return {}
    entries = re.findall(r"^([A-Za-z_0-9]+):[A-Z]+=(.*)$", cache.read_text(), re.M)
    return dict(entries)


def ninja():
    """The ninja program on PATH, or the one PyPI's `ninja` package installed."""
    found = shutil.which("ninja")
    if found is None:
        try:
            import ninja as ninja_package
            found = shutil.which("ninja", path=ninja_package.BIN_DIR)
        except ImportError:
            pass
    return found


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        editable = self.inplace or getattr(self, "editable_mode", False)
        build_dir = BUILD_DIR
        settings = {"Python3_EXECUTABLE": sys.executable,
                    # The layout `python -m manifold_mixup --cmakedir` and friends expect.
                    "CMAKE_INSTALL_LIBDIR": "lib", "CMAKE_INSTALL_INCLUDEDIR": "include"}
        for env, var in (("MM_BUILD_TYPE", "CMAKE_BUILD_TYPE"), ("MM_BUILD_TESTS", "MM_BUILD_TESTS"),
                         ("MM_CCACHE", "MM_CCACHE")):
            if env in os.environ:
                settings[var] = os.environ[env]
        cache = cmake_cache(build_dir)
        args = [f"-D{var}={value}" for var, value in settings.items()]
        if not cache:
            # A new build directory: an editable install keeps the module in the source tree,
            # a wheel's build keeps it in the build directory. An existing one (`make build`'s)
            # keeps its own settings, so make and pip never reconfigure each other.
            out_dir = PACKAGE if editable else build_dir / "python" / "manifold_mixup"
            args += [f"-DMM_PYTHON_OUTPUT_DIR={out_dir}", "-DCMAKE_BUILD_TYPE=Release"]
            if ninja() and "CMAKE_GENERATOR" not in os.environ:
                args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja()}"]
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        # A cache that already has these settings is left to `cmake --build`, which reconfigures
        # by itself when a CMakeLists.txt (or torch) changed.
        if any(cache.get(var) != value for var, value in settings.items()):
            subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args])
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "mm_python",
                               "manifold_mixup", "-j", jobs])

        out_dir = Path(cmake_cache(build_dir)["MM_PYTHON_OUTPUT_DIR"])
        info = {}
        exec((out_dir / "_build_info.py").read_text(), info)
        built_series = ".".join(info["TORCH_VERSION"].split("+")[0].split(".")[:2])
        if built_series != TORCH_SERIES:
            fail(f"{build_dir} was configured for torch {info['TORCH_VERSION']}, but this Python "
                 f"has torch {torch.__version__}: remove {build_dir} and build again")
        target.parent.mkdir(parents=True, exist_ok=True)
        for name in (target.name, "_build_info.py"):
            if out_dir / name != target.parent / name:
                shutil.copy2(out_dir / name, target.parent / name)
        # The C library, its header, dlpack.h, the CMake package and the .pc file, inside the
        # Python package, so that C and C++ hosts build against a pip install.
        subprocess.check_call(["cmake", "--install", str(build_dir), "--prefix", str(target.parent)])


setup(
    name="manifold-mixup",
    version=VERSION,
    description="Manifold Mixup for PyTorch and fastai, mixing in native code on libtorch",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension("manifold_mixup._C")],
    cmdclass={"build_ext": CMakeBuild},
    # setuptools' own build folders beside CMake's, not a second build/ tree of the source.
    options={"build": {"build_base": str(BUILD_DIR / "setuptools")}},
    python_requires=">=3.9",
    install_requires=[f"torch=={TORCH_SERIES}.*"],
    extras_require={"fastai": ["fastai>=2.7"]},
    zip_safe=False,
)
