"""What the build says it carries is what the dispatcher has: a CUDA kernel on every CUDA torch
(fused with the CUDA toolkit, composed of ATen ops without it: cmake/torch.cmake), none on a CPU
torch. scripts/torch-matrix.sh runs this file against CPU and CUDA torches, with and without the
toolkit."""
import contextlib
import io

import torch

import manifold_mixup  # noqa: F401  (registers the ops)
from manifold_mixup import _build_info
from manifold_mixup.__main__ import main

OPS = ("manifold_mixup::mix", "manifold_mixup::_mix_backward")


def test_build_info_names_the_cuda_kernel_this_torch_allows():
    assert _build_info.TORCH_VERSION == torch.__version__
    assert _build_info.CUDA_KERNEL in ({"fused", "aten"} if torch.version.cuda else {"none"})


def test_a_cuda_kernel_is_registered_exactly_on_a_cuda_torch():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA") == bool(torch.version.cuda), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


def test_version_line_says_which_cuda_kernel():
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["--version"]) == 0
    words = {"fused": "CUDA kernels: fused", "aten": "CUDA kernels: ATen-composed",
             "none": "CUDA kernels: none"}[_build_info.CUDA_KERNEL]
    assert words in out.getvalue(), out.getvalue()
