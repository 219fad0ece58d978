// mm_module_borrow from a C++ host that holds its own torch::jit::Module, linked against the C
// library only (not the core objects, so the op is registered once, by the library).
#include <ATen/DLConvertor.h>
#include <torch/script.h>

#include <cstdio>
#include <string>

#include "manifold_mixup.h"

static int failures = 0;
#define EXPECT(cond)                                                               \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::printf("FAIL %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, mm_last_error()); \
      ++failures;                                                                  \
    }                                                                              \
  } while (0)

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string dir = argv[1];
  auto* host = new torch::jit::Module(torch::jit::load(dir + "/mlp.pt"));
  const at::Tensor x = torch::randn({5, 4});
  const at::Tensor plain = host->forward({x}).toTensor();

  mm_mixer_config cfg;
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.alpha = 1.0;
  cfg.input_mixup = 0;
  mm_mixer* mixer = nullptr;
  mm_module* module = nullptr;
  mm_hook* hook = nullptr;
  const char* names[] = {"l2"};
  EXPECT(mm_mixer_create(&cfg, &mixer) == MM_OK);
  EXPECT(mm_module_borrow(host, &module) == MM_OK);
  EXPECT(mm_hook_install(mixer, module, names, 1, &hook) == MM_OK);

  // The host's own object calls through the installed point.
  int64_t chosen = -5, mixes = 0;
  EXPECT(mm_batch_begin(mixer, 5, &chosen) == MM_OK && chosen == 0);
  const at::Tensor mixed = host->forward({x}).toTensor();
  EXPECT(!torch::allclose(mixed, plain));
  EXPECT(mm_hook_mix_count(hook, 0, &mixes) == MM_OK && mixes == 1);

  // DLPack from the host's tensors into the C API, and back.
  mm_tensor *in = nullptr, *out = nullptr;
  EXPECT(mm_tensor_from_dlpack(at::toDLPack(x), &in) == MM_OK);
  // A second forward of the batch mixes as the first did, and the batch counts one mix.
  EXPECT(mm_forward(mixer, module, in, &out) == MM_OK);
  DLManagedTensor* dl = nullptr;
  EXPECT(mm_tensor_to_dlpack(out, &dl) == MM_OK);
  if (dl) EXPECT(torch::allclose(at::fromDLPack(dl), mixed));
  EXPECT(mm_hook_mix_count(hook, 0, &mixes) == MM_OK && mixes == 1);
  EXPECT(mm_batch_end(mixer) == MM_OK);

  // The host may drop its object first; the handles keep the module alive.
  delete host;
  EXPECT(mm_hook_remove(hook) == MM_OK);
  mm_tensor_destroy(in);
  mm_tensor_destroy(out);
  mm_module_destroy(module);
  mm_mixer_destroy(mixer);
  std::printf("%s\n", failures ? "FAILED" : "ok");
  return failures;
}
