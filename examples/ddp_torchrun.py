"""ManifoldMixer under DistributedDataParallel: one process per rank, each on its shard of
scikit-learn's digits, each drawing its own lam, perm and point. On 2 CPU processes:

    torchrun --standalone --nproc_per_node 2 examples/ddp_torchrun.py

(gloo on CPU; with GPUs, nccl and one GPU per rank). Each rank prints the modules it mixes at
and its counts; rank 0 prints how often the ranks mixed at different points and whether every
rank ended with the same parameters. --out DIR also writes rank<r>.json (the project's test).
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from manifold_mixup import ManifoldMixer, _C

from _digits import digits, residual_cnn


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="directory for rank<r>.json")
    args = parser.parse_args()
    start = time.time()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")

    (x_train, y_train), (x_valid, y_valid) = digits()
    n = len(x_train) // world * world  # equal shards: every rank runs the same number of steps
    x_train, y_train = x_train[rank:n:world].to(device), y_train[rank:n:world].to(device)
    x_valid, y_valid = x_valid.to(device), y_valid.to(device)

    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP broadcasts rank 0's)
    model = DistributedDataParallel(residual_cnn().to(device))
    # Selection and hooks go inside the DDP wrapper; each rank gets its own generator.
    mm = ManifoldMixer(model, alpha=1.0, seed=args.seed + rank)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def val_loss():
        model.eval()
        with torch.no_grad():
            loss = F.cross_entropy(model(x_valid), y_valid).item()
        model.train()
        return loss

    first_val, chosen, draws = val_loss(), [], []
    g = torch.Generator().manual_seed(args.seed + 1000 + rank)
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(order) - args.bs + 1, args.bs):
            idx = order[i:i + args.bs].to(device)
            with mm.batch(x_train[idx]) as xb:
                loss = mm.loss(F.cross_entropy, model(xb), y_train[idx])
                chosen.append(mm.mixer.chosen)
                if len(draws) < 4:
                    draws.append((mm.mixer.chosen, mm.mixer.lam.tolist(), mm.mixer.perm.tolist()))
            opt.zero_grad()
            loss.backward()  # DDP all-reduces whichever point this rank mixed at
            opt.step()
    last_val = val_loss()

    # The same seed draws the same lam, perm and point again.
    again = _C.Mixer(alpha=1.0, seed=args.seed + rank)
    for name in mm.point_names:
        again.add_point(name)
    redrawn = []
    for _ in draws:
        redrawn.append((again.begin_batch(args.bs, device), again.lam.tolist(), again.perm.tolist()))
        again.end_batch()

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    same_params = all(torch.equal(everyone[0], p) for p in everyone)
    all_chosen = [None] * world
    dist.all_gather_object(all_chosen, chosen)
    differ = sum(len(set(step)) > 1 for step in zip(*all_chosen))
    mixer = mm.mixer
    for turn in range(world):  # one rank at a time, so that the lines do not interleave
        if turn == rank:
            print(f"rank {rank}: points {['input'] + mm.point_names}, mixed input {mixer.input_mixes}, "
                  + ", ".join(f"'{n}' {c}" for n, c in zip(mixer.point_names, mixer.point_mixes))
                  + f" of {mixer.batches} steps; val loss {first_val:.3f} -> {last_val:.3f}; "
                  f"parameter checksum {flat.double().sum().item():.6f}", flush=True)
        dist.barrier()
    if rank == 0:
        print(f"{world} ranks, {len(chosen)} steps each: they mixed at different points in {differ} "
              f"steps; identical parameters on every rank: {same_params}; "
              f"{time.time() - start:.1f} s", flush=True)
    if args.out:
        with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
            json.dump(dict(rank=rank, world=world, points=mm.point_names, chosen=chosen,
                           draws=draws, redrawn=redrawn, first_val=first_val, last_val=last_val,
                           same_params=same_params, differ=differ,
                           checksum=flat.double().sum().item(), batches=mixer.batches,
                           mixes=list(mixer.point_mixes), input_mixes=mixer.input_mixes,
                           unmixed=mixer.unmixed_batches), f)
    mm.remove()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
