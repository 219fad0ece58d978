"""The versions: this package's (the one place it is written down) and the torch its native code
was compiled against.

CMakeLists.txt and setup.py read `__version__` from this file's text, so it stays a plain
`__version__ = "X.Y.Z"` line; the C header's MM_VERSION_* macros are checked against it when
CMake configures. The compiled-against torch comes from `_build_info.py`, which CMake writes
next to the `_C` module it builds.
"""
__version__ = "0.2.0"


def _series(version):
    """'2.13.0+cpu' -> (2, 13): releases of one series share libtorch's C++ ABI."""
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2])


def _cuda_major(cuda):
    return None if not cuda else int(cuda.split(".")[0])


def check_torch():
    """Refuses, with a message naming both versions, a torch other than the one `_C` was
    compiled against: `_C` links libtorch's C++ ABI, so the wrong torch fails with an undefined
    symbol (or a crash) instead."""
    import torch

    try:
        from ._build_info import TORCH_CUDA, TORCH_VERSION
    except ImportError:
        raise ImportError(
            "manifold_mixup: its native module is not built (no _build_info.py next to "
            f"{__file__}); install it with `pip install --no-build-isolation .` or run "
            "`make build` in the source tree") from None
    built, found = (TORCH_VERSION, TORCH_CUDA), (torch.__version__, torch.version.cuda)
    if _series(built[0]) != _series(found[0]) or _cuda_major(built[1]) != _cuda_major(found[1]):
        def describe(version, cuda):
            return f"torch {version} ({f'CUDA {cuda}' if cuda else 'no CUDA'})"
        raise ImportError(
            f"manifold_mixup {__version__} was compiled against {describe(*built)}, but this "
            f"Python has {describe(*found)}: its native code links libtorch's C++ ABI, which "
            f"changes between torch releases. Rebuild it against this torch "
            f"(`pip install --no-build-isolation --force-reinstall --no-deps <source>`) or "
            f"install torch {'.'.join(map(str, _series(built[0])))}.x.")
