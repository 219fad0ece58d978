// The C++ host API: PointRewrite and forward() on TorchScript modules built here with define()
// (so no Python and no files), and MixupPoint on torch::nn models.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "manifold_mixup.hpp"

namespace mm = manifold_mixup;

namespace {

constexpr int64_t kB = 8, kD = 4;

std::shared_ptr<mm::Mixer> make_mixer(double alpha, bool input_mixup) {
  mm::MixerOptions o;
  o.alpha = alpha;
  o.input_mixup = input_mixup;
  o.seed = 7;
  return std::make_shared<mm::Mixer>(o);
}

// A module of class `cls` with one weight w [kD, kD]; forward: relu(x) @ w (or x @ w + b for
// the affine head). Modules made with `like` share its type (and so its graphs).
torch::jit::Module block(const std::string& cls, const torch::jit::Module* like = nullptr) {
  torch::jit::Module m = like ? torch::jit::Module(like->_ivalue()->compilation_unit(), like->type())
                              : torch::jit::Module(c10::QualifiedName("__torch__." + cls));
  m.register_parameter("w", torch::randn({kD, kD}).requires_grad_(), false);
  if (!like) m.define("def forward(self, x):\n  return torch.mm(torch.relu(x), self.w)\n");
  return m;
}

// net: head(s2(s1(x))); s1 and s2 are two Stage instances of one type, each calling its own
// `inner` Block; head is affine, so mixing at s2.inner gives the plain output mixed.
struct SharedNet {
  torch::jit::Module net{c10::QualifiedName("__torch__.Net")};
  torch::jit::Module s1, s2;
  SharedNet() {
    torch::manual_seed(0);
    torch::jit::Module inner1 = block("Block");
    torch::jit::Module inner2 = block("Block", &inner1);
    s1 = torch::jit::Module(c10::QualifiedName("__torch__.Stage"));
    s1.register_module("inner", inner1);
    s1.define("def forward(self, x):\n  return self.inner.forward(x)\n");
    s2 = torch::jit::Module(s1._ivalue()->compilation_unit(), s1.type());
    s2.register_module("inner", inner2);
    torch::jit::Module head(c10::QualifiedName("__torch__.Head"));
    head.register_parameter("w", torch::randn({kD, 3}).requires_grad_(), false);
    head.register_parameter("b", torch::randn({3}).requires_grad_(), false);
    head.define("def forward(self, x):\n  return torch.mm(x, self.w) + self.b\n");
    net.register_module("s1", s1);
    net.register_module("s2", s2);
    net.register_module("head", head);
    net.define("def forward(self, x):\n  return self.head.forward(self.s2.forward(self.s1.forward(x)))\n");
    net.define("def twice(self, x):\n  return self.head.forward(self.s1.forward(self.s1.forward(x)))\n");
    // As scripted nn.Modules have it, so that train() and eval() reach every module.
    for (torch::jit::Module m : net.modules()) m.register_attribute("training", c10::BoolType::get(), true);
  }
  std::string graphs() const {
    std::string s;
    for (const auto& m : {net, s1, s2})
      for (const auto& method : m.get_methods()) s += method.name() + ":\n" + method.graph()->toString();
    return s;
  }
};

TEST(PointRewrite, SharedTypeOnlyTheNamedInstanceMixesAndRemoveRestoresExactly) {
  SharedNet n;
  ASSERT_EQ(n.s1.type(), n.s2.type());
  const at::Tensor x = torch::randn({kB, kD});
  const at::Tensor plain = n.net.forward({x}).toTensor();  // plans are cached from here on
  const std::string before = n.graphs();
  auto mixer = make_mixer(1.0, false);
  {
    mm::PointRewrite hook(mixer, n.net, {"s2.inner"});
    EXPECT_NE(n.s1.get_method("forward").graph()->toString().find("manifold_mixup::_mix_point"),
              std::string::npos);
    ASSERT_EQ(mixer->begin_batch(kB, at::kCPU), 0);
    const at::Tensor out = mm::forward(mixer.get(), n.net, x);
    EXPECT_TRUE(torch::allclose(out, mixer->mix(plain), 1e-5, 1e-5));
    EXPECT_FALSE(torch::allclose(out, plain));
    EXPECT_EQ(hook.mix_count(0), 1);
    EXPECT_EQ(mixer->repeated_calls(), 0);
    mixer->end_batch();
    EXPECT_THROW(mm::PointRewrite(make_mixer(1.0, false), n.net, {"s1"}), mm::StateError);  // types taken
    hook.remove();
    EXPECT_EQ(mixer->num_points(), 0);
  }
  EXPECT_EQ(n.graphs(), before);
  EXPECT_TRUE(torch::equal(n.net.forward({x}).toTensor(), plain));
}

TEST(PointRewrite, GradientsFlowThroughThePoint) {
  SharedNet n;
  auto mixer = make_mixer(1.0, false);
  mm::PointRewrite hook(mixer, n.net, {"s1"});
  mixer->begin_batch(kB, at::kCPU);
  const at::Tensor y = torch::arange(kB) % 3;
  const at::Tensor loss = mixer->mixed_cross_entropy(mm::forward(mixer.get(), n.net, torch::randn({kB, kD})), y).mean();
  loss.backward();
  mixer->end_batch();
  for (const at::Tensor& p : n.net.parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0);
  }
}

TEST(PointRewrite, SecondCallInABatchIsCountedNotMixed) {
  SharedNet n;
  auto mixer = make_mixer(1.0, false);
  mm::PointRewrite hook(mixer, n.net, {"s1"});
  mixer->begin_batch(kB, at::kCPU);
  n.net.run_method("twice", torch::randn({kB, kD}));
  mixer->end_batch();
  EXPECT_EQ(hook.mix_count(0), 1);
  EXPECT_EQ(mixer->repeated_calls(), 1);
}

TEST(PointRewrite, ErrorsNameTheModuleAndHaveTheirKind) {
  SharedNet n;
  auto mixer = make_mixer(1.0, false);
  try {
    mm::PointRewrite hook(mixer, n.net, {"s1.nope"});
    FAIL() << "no error";
  } catch (const mm::NotFoundError& e) {
    EXPECT_NE(std::string(e.what()).find("'s1.nope'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(mixer->num_points(), 0);
  EXPECT_THROW(mm::PointRewrite(mixer, n.net, {"s1", "s1"}), mm::ArgumentError);
  torch::jit::Module empty(c10::QualifiedName("__torch__.Empty"));
  empty.define("def forward(self, x):\n  return x\n");
  EXPECT_THROW(mm::PointRewrite(mixer, empty), mm::ArgumentError);  // nothing to select
  mixer->begin_batch(kB, at::kCPU);
  EXPECT_THROW(mm::PointRewrite(mixer, n.net, {"s1"}), mm::StateError);  // in a batch
  EXPECT_THROW(mm::forward(mixer.get(), n.net, torch::randn({kB + 1, kD})), mm::ArgumentError);
  mixer->end_batch();
  EXPECT_THROW(mm::forward(mixer.get(), n.net, torch::randn({kB, kD})), mm::StateError);
  mm::PointRewrite hook(mixer, n.net, {"s1"});
  EXPECT_THROW(mm::PointRewrite(mixer, n.net, {"s2"}), mm::StateError);  // one per mixer
  EXPECT_THROW(hook.mix_count(3), mm::ArgumentError);
  hook.remove();
  EXPECT_THROW(hook.mix_count(0), mm::StateError);
}

// A plain forward (no mixer) and a module in eval mode mix nothing, though a batch is open.
TEST(PointRewrite, PlainForwardAndEvalModeDoNotMix) {
  SharedNet n;
  const at::Tensor x = torch::randn({kB, kD});
  const at::Tensor plain = n.net.forward({x}).toTensor();
  auto mixer = make_mixer(1.0, true);
  mm::PointRewrite hook(mixer, n.net, {"s2.inner"});
  int64_t chosen = mm::Mixer::kNoPoint;
  while ((chosen = mixer->begin_batch(kB, at::kCPU)) != 0) mixer->end_batch();  // the point, not the input
  EXPECT_TRUE(torch::equal(mm::forward(nullptr, n.net, x), plain));
  n.net.eval();
  EXPECT_TRUE(torch::equal(mm::forward(mixer.get(), n.net, x), plain));
  EXPECT_TRUE(torch::equal(n.net.forward({x}).toTensor(), plain));
  EXPECT_EQ(hook.mix_count(0), 0);
  n.net.train();
  EXPECT_FALSE(torch::allclose(n.net.forward({x}).toTensor(), plain));  // any other forward mixes
  EXPECT_EQ(hook.mix_count(0), 1);
  mixer->end_batch();
  while (mixer->begin_batch(kB, at::kCPU) != mm::Mixer::kInputPoint) mixer->end_batch();
  n.net.eval();
  EXPECT_TRUE(torch::equal(mm::forward(mixer.get(), n.net, x), plain));  // nor the input
  EXPECT_EQ(mixer->input_mixes(), 0);
  mixer->end_batch();
}

// Removal never fails: in a batch it ends the batch first.
TEST(PointRewrite, RemoveInABatchEndsIt) {
  SharedNet n;
  const at::Tensor x = torch::randn({kB, kD});
  const at::Tensor plain = n.net.forward({x}).toTensor();
  auto mixer = make_mixer(1.0, false);
  {
    mm::PointRewrite hook(mixer, n.net, {"s1"});
    mixer->begin_batch(kB, at::kCPU);
    hook.remove();
    EXPECT_FALSE(mixer->in_batch());
    EXPECT_EQ(mixer->num_points(), 0);
    mm::PointRewrite again(mixer, n.net, {"s1"});
    mixer->begin_batch(kB, at::kCPU);
  }  // destroyed in a batch
  EXPECT_FALSE(mixer->in_batch());
  EXPECT_TRUE(torch::equal(n.net.forward({x}).toTensor(), plain));
}

TEST(Selection, RulesInOrder) {
  SharedNet n;
  mm::PointSelection s = mm::select_points(n.net);  // s1.inner, s2.inner are Blocks
  EXPECT_EQ(s.names, (std::vector<std::string>{"s1.inner", "s2.inner"}));
  EXPECT_NE(s.rule.find("block"), std::string::npos);
  EXPECT_TRUE(mm::is_non_mixable_class("Sequential"));
  EXPECT_TRUE(mm::is_non_mixable_class("AlphaDropout"));
  EXPECT_FALSE(mm::is_non_mixable_class("Linear"));
  torch::jit::Module empty(c10::QualifiedName("__torch__.Empty"));
  EXPECT_THROW(mm::select_points(empty), c10::Error);
}

TEST(MixupPoint, MixesOnlyWhenChosenAndTrains) {
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(kD, 8), torch::nn::Functional(torch::relu),
                            mm::MixupPoint(torch::nn::Linear(8, 8)), torch::nn::Linear(8, 3));
  auto mixer = make_mixer(1.0, false);
  EXPECT_EQ(mm::attach_points(mixer, *net), (std::vector<std::string>{"2"}));
  const at::Tensor x = torch::randn({kB, kD});
  const at::Tensor y = torch::arange(kB) % 3;
  const at::Tensor plain = net->forward(x);  // outside a batch: plain
  ASSERT_EQ(mixer->begin_batch(kB, at::kCPU), 0);
  EXPECT_TRUE(torch::allclose(net->forward(x), mixer->mix(plain), 1e-5, 1e-5));
  mixer->end_batch();
  EXPECT_EQ(mixer->point_mixes()[0], 1);

  torch::optim::SGD opt(net->parameters(), 0.1);
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    mixer->begin_batch(kB, at::kCPU);
    const at::Tensor loss = mixer->mixed_cross_entropy(net->forward(mixer->mix_input(x)), y).mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
    mixer->end_batch();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, first);
  // In eval mode the wrapper does not mix, in a batch where it is chosen.
  net->eval();
  const at::Tensor eval_plain = net->forward(x);
  ASSERT_EQ(mixer->begin_batch(kB, at::kCPU), 0);
  EXPECT_TRUE(torch::equal(net->forward(x), eval_plain));
  mixer->end_batch();
  mm::detach_points(mixer, *net);
  EXPECT_EQ(mixer->num_points(), 0);
}

}  // namespace
