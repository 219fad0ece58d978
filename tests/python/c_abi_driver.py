"""Mixes one batch through the C library (libmanifold_mixup.so.0) with ctypes, as a Python host
of a C plugin would: the module's first layer is the one mixup point. Kept apart from the tests
so that a process can load the C library before anything imports torch:

    python c_abi_driver.py LIBRARY MODEL.pt    the C library first, then manifold_mixup; prints
                                               what mix_through_c_abi returns, and what
                                               one_core_mapped says, as JSON
"""
import ctypes
import json
import sys


class MixerConfig(ctypes.Structure):
    """mm_mixer_config, as manifold_mixup.h declares it."""
    _fields_ = [("size", ctypes.c_size_t), ("alpha", ctypes.c_double), ("input_mixup", ctypes.c_int),
                ("has_seed", ctypes.c_int), ("seed", ctypes.c_uint64), ("schedule", ctypes.c_int),
                ("alpha_min", ctypes.c_double), ("alpha_max", ctypes.c_double),
                ("total_steps", ctypes.c_int64)]


def load(path):
    lib = ctypes.CDLL(str(path))
    lib.mm_last_error.restype = ctypes.c_char_p
    lib.mm_version_string.restype = ctypes.c_char_p
    return lib


def mix_through_c_abi(lib, model, batch=5, features=4, classes=3):
    """One batch of `model` (a TorchScript file of Linear(features, .) ... -> classes) with point
    "0": {version, x, out, lam, perm, mixed}, the tensors as nested lists."""
    def ok(status):
        assert status == 0, lib.mm_last_error().decode()

    p = ctypes.c_void_p
    mixer, module, hook, x, out, lam, perm = (p() for _ in range(7))
    cfg = MixerConfig()
    ok(lib.mm_mixer_config_init(ctypes.byref(cfg), ctypes.c_size_t(ctypes.sizeof(cfg))))
    cfg.alpha, cfg.input_mixup, cfg.has_seed, cfg.seed = 1.0, 0, 1, 7
    ok(lib.mm_mixer_create(ctypes.byref(cfg), ctypes.byref(mixer)))
    ok(lib.mm_module_load(str(model).encode(), ctypes.byref(module)))
    names = (ctypes.c_char_p * 1)(b"0")
    ok(lib.mm_hook_install(mixer, module, names, ctypes.c_size_t(1), ctypes.byref(hook)))
    values = [((3 * i) % 7 - 3) / 2 for i in range(batch * features)]
    shape = (ctypes.c_int64 * 2)(batch, features)
    ok(lib.mm_tensor_from_host((ctypes.c_float * len(values))(*values), 0, shape, 2, ctypes.byref(x)))
    ok(lib.mm_batch_begin(mixer, ctypes.c_int64(batch), None))
    ok(lib.mm_forward(mixer, module, x, ctypes.byref(out)))
    mixed = ctypes.c_int()
    ok(lib.mm_batch_mixed(mixer, ctypes.byref(mixed)))
    ok(lib.mm_batch_weights(mixer, ctypes.byref(lam), ctypes.byref(perm)))
    out_host, lam_host = (ctypes.c_float * (batch * classes))(), (ctypes.c_float * batch)()
    perm_host = (ctypes.c_int64 * batch)()
    ok(lib.mm_tensor_to_host(out, out_host, ctypes.c_size_t(ctypes.sizeof(out_host))))
    ok(lib.mm_tensor_to_host(lam, lam_host, ctypes.c_size_t(ctypes.sizeof(lam_host))))
    ok(lib.mm_tensor_to_host(perm, perm_host, ctypes.c_size_t(ctypes.sizeof(perm_host))))
    ok(lib.mm_batch_end(mixer))
    ok(lib.mm_hook_remove(hook))
    for tensor in (x, out, lam, perm):
        ok(lib.mm_tensor_destroy(tensor))
    ok(lib.mm_module_destroy(module))
    ok(lib.mm_mixer_destroy(mixer))
    return {"version": lib.mm_version_string().decode(),
            "x": [values[i * features:(i + 1) * features] for i in range(batch)],
            "out": [list(out_host[i * classes:(i + 1) * classes]) for i in range(batch)],
            "lam": list(lam_host), "perm": list(perm_host), "mixed": mixed.value}


def mapped_cores():
    """The files of libmanifold_mixup_core mapped into this process."""
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "libmanifold_mixup_core" in line})


if __name__ == "__main__":
    lib = load(sys.argv[1])
    said = mix_through_c_abi(lib, sys.argv[2])
    import torch  # noqa: E402  (after the C library: the order under test)
    import manifold_mixup  # noqa: E402
    x = torch.randn(4, 3)
    mixed = manifold_mixup.mix(x, torch.tensor([1, 0, 3, 2]), torch.full((4,), 0.5))
    said["python_mix"] = torch.allclose(mixed[0], (x[0] + x[1]) / 2)
    said["cores"] = mapped_cores()
    print(json.dumps(said))
