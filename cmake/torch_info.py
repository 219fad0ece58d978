"""Prints, one `name=value` a line, what cmake/torch.cmake needs to know of the torch this Python
imports: the facts torch.utils.cpp_extension builds extensions from, read from torch itself
rather than from its CMake config (which refuses a CUDA torch when no CUDA toolkit is found).

  version       torch.__version__                      2.14.1+cu130
  cuda          torch.version.cuda, empty without CUDA 13.0
  dir           torch's package folder
  cmake_prefix  torch.utils.cmake_prefix_path
  cxx11_abi     the _GLIBCXX_USE_CXX11_ABI value libtorch was built with (0 or 1)
  cxx_standard  the C++ standard torch's headers need (from TorchConfig.cmake; 17 if it says none)
  cuda_home     the toolkit torch's extension builder would use (CUDA_HOME, CUDA_PATH, nvcc on
                PATH, /usr/local/cuda), empty when it finds none or torch has no CUDA
  key           what a build folder is configured for: this torch (version and folder) and, for a
                CUDA torch, the nvcc the build would use (CUDACXX, else cuda_home's, else none);
                setup.py and the Makefile configure a folder afresh when its key changes
"""
import os
import re

import torch


def cxx_standard(torch_dir):
    """TorchConfig.cmake states the standard as `CXX_STANDARD 20` on the torch target (through
    2.14) or as the compile feature `cxx_std_20` (2.15 on); older configs say 14 or 17."""
    config = os.path.join(torch_dir, "share", "cmake", "Torch", "TorchConfig.cmake")
    try:
        with open(config) as f:
            text = f.read()
    except OSError:
        return 17
    found = [int(n) for n in re.findall(r"(?:CXX_STANDARD\s+|cxx_std_)(\d+)", text)]
    return max(found + [17])


def cuda_home():
    if not torch.version.cuda:
        return ""
    from torch.utils.cpp_extension import CUDA_HOME  # the lookup torch's own builder makes
    return CUDA_HOME if CUDA_HOME and os.path.isdir(CUDA_HOME) else ""


def torch_dir():
    return os.path.dirname(os.path.abspath(torch.__file__))


def nvcc():
    """The nvcc a build would use: CUDACXX, else the one in torch's CUDA_HOME, else none."""
    if os.environ.get("CUDACXX"):
        return os.environ["CUDACXX"]
    home = cuda_home()
    found = os.path.join(home, "bin", "nvcc") if home else ""
    return found if found and os.path.exists(found) else ""


def key():
    """A toolkit that appears or goes changes the build as much as another torch does: a folder
    configured with nvcc names its libraries, one without never looks for nvcc again."""
    found = f", nvcc {nvcc() or 'none'}" if torch.version.cuda else ""
    return f"torch {torch.__version__} in {torch_dir()}{found}"


def main():
    facts = {
        "version": torch.__version__,
        "cuda": torch.version.cuda or "",
        "dir": torch_dir(),
        "cmake_prefix": torch.utils.cmake_prefix_path,
        "cxx11_abi": int(torch._C._GLIBCXX_USE_CXX11_ABI),
        "cxx_standard": cxx_standard(torch_dir()),
        "cuda_home": cuda_home(),
        "key": key(),
    }
    for name, value in facts.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
