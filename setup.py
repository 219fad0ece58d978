"""pip install --no-build-isolation [-e] .   builds manifold_mixup with CMakeLists.txt.

The native build has one description, CMakeLists.txt; this file only drives it, against the
torch already installed in the running Python (CPU-only or CUDA, with or without the CUDA
toolkit: cmake/torch.cmake). The package it makes holds the Python extension and, beside it, the
C library, its header, dlpack.h, the CMake package and the pkg-config file (`python -m
manifold_mixup --cmakedir` prints where). Its requirement on torch is the release series it was
compiled against (`torch==2.13.*`): libtorch's C++ ABI changes between series. The metadata is in
pyproject.toml; making the sdist needs no torch.

Environment: MM_CMAKE_BUILD_DIR (default build/pip/<torch version>-<hash of torch's folder and of
the nvcc found>, so each torch, with or without the CUDA toolkit, keeps its own build; a folder
configured for another torch or toolkit, or whose configure failed, is configured afresh,
keeping its own settings), MM_BUILD_TESTS, MM_BUILD_TYPE, MM_CCACHE and MM_CUDA_KERNEL (auto,
fused or aten; passed on to CMake when set), MAX_JOBS (parallel compile jobs, default: the CPU
count). Ninja builds when it is found (Debian's
ninja-build, or `pip install ninja`), ccache is used when installed (MM_CCACHE=OFF turns it off).
"""
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "python" / "manifold_mixup"
# Commands that compile, or that write a wheel's metadata (which pins the torch series).
BUILD_COMMANDS = {"bdist_wheel", "dist_info", "editable_wheel", "build_ext", "build", "develop", "install"}
# What the wheel carries beside the Python sources, all made by CMake: these files, copied from
# the folder CMake writes the module to, and whatever `cmake --install` installs (the install
# rules of capi/CMakeLists.txt: the C library, its headers, the CMake and pkg-config files).
BUILT_MODULE_FILES = ("_build_info.py",)  # and the extension module itself
# pyproject.toml's SPDX licence (PEP 639) needs setuptools 77; torch asks for 77.0.3 too.
SETUPTOOLS_MIN = (77, 0, 3)


def fail(message):
    sys.exit(f"\nmanifold-mixup: {message}\n")


def version_tuple(text):
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


# With --no-build-isolation pip installs no build requirements, and a new virtualenv's own
# setuptools (65 on Python 3.11) cannot read pyproject.toml's licence nor build a wheel. Say so
# before anything else, instead of a schema error or "invalid command 'bdist_wheel'".
if version_tuple(setuptools.__version__) < SETUPTOOLS_MIN:
    fail(f"the setuptools in this environment ({setuptools.__version__}, {Path(setuptools.__file__).parent}) "
         f"is older than {'.'.join(map(str, SETUPTOOLS_MIN))}, which this package needs (torch itself "
         "asks for it), and with --no-build-isolation pip installs no build requirements. Upgrade "
         f"it, then run the same pip command again:\n    {sys.executable} -m pip install --upgrade setuptools\n")


def isolated_build_env():
    """The folder of pip's (or pypa/build's) isolated build environment, if this runs in one."""
    for entry in sys.path + [sys.prefix]:
        if re.search(r"(pip-build-env-|build-env-)", entry):
            return entry
    return None


def torch_outside(python):
    """The torch version `python` imports outside pip's isolated environment, or None."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    done = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], env=env,
                          capture_output=True, text=True, cwd="/")
    return done.stdout.strip() if done.returncode == 0 else None


def import_torch():
    try:
        import torch
    except ImportError:
        isolated = isolated_build_env()
        if isolated:
            outside = torch_outside(sys.executable)
            has = (f"{sys.executable} has torch {outside}, but" if outside
                   else f"{sys.executable} itself has no torch either, and")
            fail(f"{has} pip is building in an isolated build environment ({isolated}), which never "
                 "has torch. This package compiles against the torch already installed: turn the "
                 "isolation off,\n    pip install --no-build-isolation ...\n(python -m build: "
                 "--no-isolation)" + ("" if outside else ", after installing torch"))
        fail(f"{sys.executable} cannot import torch. This package is compiled against the torch "
             "already installed in the Python that builds it: install torch first, then "
             "`pip install --no-build-isolation ...`.")
    return torch


def torch_series(torch):
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def torch_info():
    """cmake/torch_info.py, which CMake runs too: one definition of a build folder's torch key."""
    spec = importlib.util.spec_from_file_location("mm_torch_info", ROOT / "cmake" / "torch_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def generated(build_dir):
    """Whether a configure finished there: a failed one leaves a cache but no build files."""
    return (build_dir / "build.ninja").exists() or (build_dir / "Makefile").exists()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        torch = import_torch()
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        editable = self.inplace or getattr(self, "editable_mode", False)
        build_dir = cmake_build_dir()
        settings = {"Python3_EXECUTABLE": sys.executable,
                    # The layout `python -m manifold_mixup --cmakedir` and friends expect.
                    "CMAKE_INSTALL_LIBDIR": "lib", "CMAKE_INSTALL_INCLUDEDIR": "include"}
        for env, var in (("MM_BUILD_TYPE", "CMAKE_BUILD_TYPE"), ("MM_BUILD_TESTS", "MM_BUILD_TESTS"),
                         ("MM_CCACHE", "MM_CCACHE"), ("MM_CUDA_KERNEL", "MM_CUDA_KERNEL")):
            if env in os.environ:
                settings[var] = os.environ[env]
        cache = cmake_cache(build_dir)
        args = [f"-D{var}={value}" for var, value in settings.items()]
        # A cache also keeps what its configure found (nvcc or none, Torch_DIR), which a plain
        # reconfigure would reuse: a folder whose configure failed, or that was configured for
        # another torch or toolkit (cmake/torch_info.py's key), starts afresh.
        fresh = not (cache and generated(build_dir) and cache.get("MM_TORCH_KEY") == torch_info().key())
        if fresh:
            # A new folder: an editable install keeps the module in the source tree, a wheel's
            # build keeps it in the build folder. A folder configured before (`make build`'s, or
            # one for another torch) keeps its own settings, so make and pip never reconfigure
            # each other's; a failed configure's settings may be what failed, and go.
            own = ["MM_PYTHON_OUTPUT_DIR"]
            if generated(build_dir):
                own += ["CMAKE_BUILD_TYPE", "MM_BUILD_TESTS", "MM_CUDA_KERNEL", "MM_CUDA_ARCHITECTURES"]
            kept = {var: cache[var] for var in own if cache.get(var) and var not in settings}
            kept.setdefault("MM_PYTHON_OUTPUT_DIR",
                            str(PACKAGE if editable else build_dir / "python" / "manifold_mixup"))
            kept.setdefault("CMAKE_BUILD_TYPE", "Release")
            args += [f"-D{var}={value}" for var, value in kept.items()]
            if ninja() and "CMAKE_GENERATOR" not in os.environ:
                args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja()}"]
            (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
            shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        # A folder already configured with these settings is left to `cmake --build`, which
        # reconfigures by itself when a CMakeLists.txt changed.
        if fresh or any(cache.get(var) != value for var, value in settings.items()):
            subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args])
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "mm_python",
                               "manifold_mixup", "-j", jobs])

        out_dir = Path(cmake_cache(build_dir)["MM_PYTHON_OUTPUT_DIR"])
        info = {}
        exec((out_dir / "_build_info.py").read_text(), info)
        if info["TORCH_VERSION"] != torch.__version__:  # another build folder writing into the same tree
            fail(f"{build_dir} built against torch {info['TORCH_VERSION']}, but this Python has torch "
                 f"{torch.__version__}: remove {build_dir} and build again")
        print(f"manifold-mixup: built against torch {info['TORCH_VERSION']}, CUDA kernel: "
              f"{info['CUDA_KERNEL']}, in {build_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        for name in (target.name, *BUILT_MODULE_FILES):
            if out_dir / name != target.parent / name:
                shutil.copy2(out_dir / name, target.parent / name)
        # The C library, its header, dlpack.h, the CMake package and the .pc file, inside the
        # Python package, so that C and C++ hosts build against a pip install; what an earlier
        # build installed there goes first, so that a wheel carries only this build's files.
        for folder in ("lib", "include"):
            shutil.rmtree(target.parent / folder, ignore_errors=True)
        subprocess.check_call(["cmake", "--install", str(build_dir), "--prefix", str(target.parent)])


def cmake_build_dir():
    """MM_CMAKE_BUILD_DIR, else a folder of build/pip for this torch."""
    chosen = os.environ.get("MM_CMAKE_BUILD_DIR")
    if chosen:
        return Path(chosen).resolve()
    torch = import_torch()
    digest = hashlib.sha256(torch_info().key().encode()).hexdigest()[:8]
    return ROOT / "build" / "pip" / f"{torch.__version__}-{digest}"


if BUILD_COMMANDS & set(sys.argv[1:]):
    # The wheel requires the torch series it is compiled against, and setuptools' own build
    # folders (whose lib folder becomes the wheel) live in the CMake build folder of that torch.
    setup_args = {"install_requires": [f"torch=={torch_series(import_torch())}.*"],
                  "options": {"build": {"build_base": str(cmake_build_dir() / "setuptools")}}}
else:
    # The sdist, and metadata asked for without building: no torch needed, none pinned.
    setup_args = {"install_requires": ["torch"],
                  "options": {"build": {"build_base": str(ROOT / "build" / "setuptools")}}}

setup(ext_modules=[CMakeExtension("manifold_mixup._C")], cmdclass={"build_ext": CMakeBuild}, **setup_args)
