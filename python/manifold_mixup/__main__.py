"""`python -m manifold_mixup --cmakedir` (and --includedir, --libdir, --pkgconfig): where this
installed package keeps the C library, its header and the files CMake and pkg-config read, as
`python -m pybind11 --cmakedir` does:

    cmake -DCMAKE_PREFIX_PATH="$(python -m manifold_mixup --cmakedir)" ...
    PKG_CONFIG_PATH="$(python -m manifold_mixup --pkgconfig)" pkg-config --cflags --libs manifold_mixup
"""
import argparse
import sys
from pathlib import Path

from . import __version__
from ._build_info import CUDA_KERNEL, TORCH_CUDA, TORCH_VERSION

PACKAGE = Path(__file__).resolve().parent
# The layout setup.py installs the C package in (`cmake --install` with this package's folder as
# the prefix).
LOCATIONS = {
    "cmakedir": ("the folder of ManifoldMixupConfig.cmake", PACKAGE / "lib" / "cmake" / "ManifoldMixup"),
    "includedir": ("the folder of manifold_mixup.h (C), manifold_mixup/ (C++) and dlpack/", PACKAGE / "include"),
    "libdir": ("the folder of libmanifold_mixup.so.0 (C) and libmanifold_mixup_core.so (C++)", PACKAGE / "lib"),
    "pkgconfig": ("the folder of manifold_mixup.pc", PACKAGE / "lib" / "pkgconfig"),
}
# _build_info.CUDA_KERNEL, as --version says it (cmake/torch.cmake decides which is built).
CUDA_KERNELS = {
    "fused": "fused",
    "aten": "ATen-composed (built without the CUDA toolkit: correct, slower than fused)",
    "none": "none",
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m manifold_mixup", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", action="store_true",
                       help="this package's version, the torch it was compiled against and its CUDA kernels")
    for name, (what, _) in LOCATIONS.items():
        group.add_argument(f"--{name}", action="store_true", help=f"print {what}")
    args = parser.parse_args(argv)
    if args.version:
        cuda = f", CUDA {TORCH_CUDA}" if TORCH_CUDA else ""
        print(f"manifold_mixup {__version__} (compiled against torch {TORCH_VERSION}{cuda}; "
              f"CUDA kernels: {CUDA_KERNELS.get(CUDA_KERNEL, CUDA_KERNEL)})")
        return 0
    name = next(name for name in LOCATIONS if getattr(args, name))
    what, path = LOCATIONS[name]
    if not path.is_dir():
        # An editable install refreshed by `cmake --build` alone, or a copy of the Python files.
        parser.exit(1, f"manifold_mixup: {path} ({what}) does not exist: the C package is "
                       f"installed with the Python package by `pip install` and `make build`\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
