// A C++ host built against an installed manifold_mixup (tests/python/test_install.py builds it
// through the CMake package's ManifoldMixup::core): the C++ API's headers and the core library
// come from the install, libtorch from the host's own find_package(Torch). It trains a
// torch::nn model whose middle layer is a MixupPoint for a few steps.
// Usage: host_cpp   prints "mixes N" (batches that mixed at the point), "loss FIRST LAST", and
// "core PATH" (the libmanifold_mixup_core this process mapped).
#include <manifold_mixup/manifold_mixup.hpp>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

namespace mm = manifold_mixup;

// The libmanifold_mixup_core mapped into this process (one only, or "").
static std::string mapped_core() {
  std::ifstream maps("/proc/self/maps");
  std::string line, found;
  while (std::getline(maps, line)) {
    const auto at = line.find('/');
    if (at == std::string::npos || line.find("libmanifold_mixup_core") == std::string::npos) continue;
    const std::string path = line.substr(at);
    if (!found.empty() && found != path) return "";
    found = path;
  }
  return found;
}

int main() {
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(4, 16), mm::MixupPoint(torch::nn::Linear(16, 16)),
                            torch::nn::Linear(16, 3));
  mm::MixerOptions options;
  options.alpha = 1.0;
  options.input_mixup = false;  // the point is the only candidate: every batch mixes there
  options.seed = 7;
  auto mixer = std::make_shared<mm::Mixer>(options);
  mm::attach_points(mixer, *net);
  const at::Tensor x = torch::randn({32, 4});
  const at::Tensor y = (x.select(1, 0) > 0).to(at::kLong) + (x.select(1, 1) > 0).to(at::kLong);
  torch::optim::SGD opt(net->parameters(), 0.2);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    mixer->begin_batch(x.size(0), x.device());
    const at::Tensor loss = mixer->mixed_cross_entropy(net->forward(mixer->mix_input(x)), y).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
    mixer->end_batch();
    (step == 0 ? first : last) = loss.item<double>();
  }
  std::printf("mixes %lld\n", static_cast<long long>(mixer->point_mixes().at(0)));
  std::printf("loss %.6f %.6f\n", first, last);
  std::printf("core %s\n", mapped_core().c_str());
  return 0;
}
