"""Prints the CUDA architectures to build manifold_mixup's kernels for, as a CMake list
("80-real;90-real;90-virtual"), chosen as torch.utils.cpp_extension chooses them:
TORCH_CUDA_ARCH_LIST when it is set, else the GPUs the build machine sees. With neither (a build
machine without a GPU, as in CI and Docker builds, where CMake's "native" fails) it takes the
architectures this torch itself was built for. Prints nothing for a torch without CUDA."""
import os
import re

import torch


def from_gencode_flags(flags):
    """-gencode=arch=compute_90,code=sm_90 -> 90-real; ...,code=compute_90 -> 90-virtual."""
    archs = []
    for flag in flags:
        kind, arch = re.search(r"code=(sm|compute)_(\w+)", flag).groups()
        archs.append(f"{arch}-{'real' if kind == 'sm' else 'virtual'}")
    return archs


def architectures():
    if not torch.version.cuda:
        return []
    wanted = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if (wanted and wanted != "native") or torch.cuda.device_count() > 0:
        from torch.utils.cpp_extension import _get_cuda_arch_flags
        return from_gencode_flags(_get_cuda_arch_flags())
    # torch.cuda.get_arch_list() says [] without a GPU; the list it reads does not need one.
    built_for = (torch._C._cuda_getArchFlags() or "").split()  # "sm_80 ... compute_90"
    return from_gencode_flags(f"code={arch}" for arch in built_for)


if __name__ == "__main__":
    # In numeric order (75 before 100), for the build line.
    print(";".join(sorted(set(architectures()), key=lambda a: (int(re.match(r"\d+", a)[0]), a))))
