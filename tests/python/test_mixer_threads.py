"""One Mixer driven from two Python threads: a training loop's thread begins and ends batches
while another thread's forward reaches the mixup point. The Mixer has no lock of its own: its
Python methods keep the GIL, so each call sees and leaves whole state, and a batch that says it
mixed was mixed with its own weights and permutation."""
import sys
import threading
import time

import torch

from manifold_mixup import _C


def test_two_threads_never_tear_the_mixer_state():
    mixer = _C.Mixer(alpha=1.0, input_mixup=False, seed=0)
    point = mixer.add_point("block")  # the only candidate: every batch chooses it
    # Mixing x takes longer than the training loop's pause: a Mixer that let the GIL go while
    # mixing would see the batch end, and the next begin, in the middle of point_output.
    x = torch.randn(64, 32768)
    batches, draws, said_mixed, outputs, errors = 200, [], [], [], []
    done = threading.Event()

    def training_loop():
        try:
            for _ in range(batches):
                mixer.begin_batch(x.shape[0], x.device)
                draws.append((mixer.lam.clone(), mixer.perm.clone()))
                time.sleep(1e-4)  # the forward runs on the other thread
                said_mixed.append(mixer.mixed)
                mixer.end_batch()
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)
        finally:
            done.set()

    def forward_at_the_point():
        try:
            while not done.is_set():
                out = mixer.point_output(point, x)
                if out is not x:
                    outputs.append(out[:, :4].clone())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the threads take turns between calls often
    try:
        threads = [threading.Thread(target=f) for f in (training_loop, forward_at_the_point)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert mixer.batches == batches
    assert mixer.point_mixes[point] == len(outputs)
    # Each batch mixed once, at its first point_output, or ended unmixed.
    assert mixer.point_mixes[point] + mixer.unmixed_batches == batches
    assert sum(said_mixed) > 0
    # A batch that said it mixed has an output mixed with its own draw.
    for (lam, perm), mixed in zip(draws, said_mixed):
        if mixed:
            expected = lam[:, None] * x[:, :4] + (1 - lam[:, None]) * x[perm, :4]
            assert any(torch.allclose(out, expected, rtol=1e-5, atol=1e-5) for out in outputs)
