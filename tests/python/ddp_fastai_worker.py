"""One rank of test_distributed's fastai run: a Learner per process on its shard of the digits,
the model wrapped in DistributedDataParallel, our ManifoldMixup callback (gloo, CPU). This is
how fastai trains under DDP here: fastai's own distrib_ctx() needs accelerate and CUDA."""
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from fastai.basics import CrossEntropyLossFlat, DataLoaders, Learner, set_seed
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from _digits import digits, residual_cnn  # noqa: E402

from manifold_mixup import ManifoldMixup  # noqa: E402


def main(out):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    (x, y), (xv, yv) = digits()
    n = 256 // world * world
    train = list(zip(x[rank:n:world], y[rank:n:world]))
    set_seed(rank)
    dls = DataLoaders.from_dsets(train, list(zip(xv[:64], yv[:64])), bs=32)
    torch.manual_seed(0)
    model = DistributedDataParallel(residual_cnn())
    cb = ManifoldMixup(alpha=1.0)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[cb])
    said = io.StringIO()
    with contextlib.redirect_stdout(said), learn.no_bar(), learn.no_logging():
        learn.fit(2, 3e-3)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    losses = [v[0] for v in learn.recorder.values]
    with open(os.path.join(out, f"fastai_rank{rank}.json"), "w") as f:
        json.dump(dict(rank=rank, points=list(cb.mixer.point_names), batches=cb.mixer.batches,
                       mixes=sum(cb.mixer.point_mixes) + cb.mixer.input_mixes,
                       unmixed=cb.mixer.unmixed_batches, said=said.getvalue(),
                       same_params=all(torch.equal(everyone[0], p) for p in everyone),
                       hooks=sum(len(m._forward_hooks) for m in model.modules()),
                       restored=type(learn.loss_func).__name__, losses=losses), f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
