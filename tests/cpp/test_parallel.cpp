// The op's CPU loops use every thread ATen is given, as ATen's own elementwise ops do, and
// the process holds one OpenMP runtime (torch's). at::parallel_for's OpenMP body is inline in
// ATen's headers, so code compiled without OpenMP runs it on the calling thread alone: these
// tests catch such a build from the outside, by the CPU time each thread of the process spent.
#include <ATen/Config.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <dirent.h>

#include <fstream>
#include <map>
#include <set>
#include <string>

#include "ops/mix.h"

namespace {

// Nanoseconds each thread of this process has run on a CPU (/proc/self/task/<tid>/schedstat).
std::map<long, long long> cpu_ns_per_thread() {
  std::map<long, long long> ns;
  DIR* dir = opendir("/proc/self/task");
  if (!dir) return ns;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(std::string("/proc/self/task/") + e->d_name + "/schedstat");
    long long run = 0;
    if (in >> run) ns[std::stol(e->d_name)] = run;
  }
  closedir(dir);
  return ns;
}

struct Shares {
  long long caller = 0, busiest_other = 0;
};

// CPU time of the calling thread and of the busiest other thread while `work` runs.
template <typename Fn>
Shares shares_while(const Fn& work) {
  const long self = static_cast<long>(gettid());
  const auto before = cpu_ns_per_thread();
  work();
  Shares s;
  for (const auto& [tid, ns] : cpu_ns_per_thread()) {
    const auto it = before.find(tid);
    const long long spent = ns - (it == before.end() ? 0 : it->second);
    if (tid == self) s.caller = spent;
    else s.busiest_other = std::max(s.busiest_other, spent);
  }
  return s;
}

class Parallel : public ::testing::Test {
 protected:
  void SetUp() override {
    threads_ = at::get_num_threads();
    if (cpu_ns_per_thread().empty()) GTEST_SKIP() << "no /proc/self/task/<tid>/schedstat here";
    at::set_num_threads(2);
  }
  void TearDown() override { at::set_num_threads(threads_); }
  int threads_ = 1;
};

// 64 MB of float32: far above the kernels' grain, so two threads always split it.
constexpr int64_t kBatch = 64, kFeatures = 1 << 18;

TEST_F(Parallel, ForwardRunsOnTwoThreads) {
  const auto x = torch::randn({kBatch, kFeatures});
  const auto perm = torch::randperm(kBatch);
  const auto lam = torch::rand({kBatch});
  manifold_mixup::mix(x, perm, lam);  // the thread pool exists before measuring
  const auto s = shares_while([&] {
    for (int i = 0; i < 10; ++i) manifold_mixup::mix(x, perm, lam);
  });
  // Split in two, the second thread runs about as long as the caller; run serially it idles.
  EXPECT_GT(s.busiest_other, s.caller / 4)
      << "caller " << s.caller / 1e6 << " ms, busiest other thread " << s.busiest_other / 1e6 << " ms";
}

TEST_F(Parallel, CopiesOfLamOneRunOnTwoThreads) {
  // Under torch.compile every point calls the op, with lam all ones at all but one: then the
  // forward and the backward are copies, which must split over the threads too.
  const auto x = torch::randn({kBatch, kFeatures}).requires_grad_();
  const auto perm = torch::randperm(kBatch);
  const auto lam = torch::ones({kBatch});
  const auto grad = torch::randn({kBatch, kFeatures});
  const auto out = manifold_mixup::mix(x, perm, lam);
  torch::autograd::grad({out}, {x}, {grad}, /*retain_graph=*/true);
  const auto s = shares_while([&] {
    for (int i = 0; i < 10; ++i) {
      manifold_mixup::mix(x.detach(), perm, lam);
      torch::autograd::grad({out}, {x}, {grad}, /*retain_graph=*/true);
    }
  });
  EXPECT_GT(s.busiest_other, s.caller / 4)
      << "caller " << s.caller / 1e6 << " ms, busiest other thread " << s.busiest_other / 1e6 << " ms";
}

TEST_F(Parallel, BackwardRunsOnTwoThreads) {
  const auto x = torch::randn({kBatch, kFeatures}).requires_grad_();
  const auto perm = torch::randperm(kBatch);
  const auto lam = torch::rand({kBatch});
  const auto grad = torch::randn({kBatch, kFeatures});
  const auto out = manifold_mixup::mix(x, perm, lam);
  torch::autograd::grad({out}, {x}, {grad}, /*retain_graph=*/true);
  const auto s = shares_while([&] {
    for (int i = 0; i < 10; ++i) torch::autograd::grad({out}, {x}, {grad}, /*retain_graph=*/true);
  });
  EXPECT_GT(s.busiest_other, s.caller / 4)
      << "caller " << s.caller / 1e6 << " ms, busiest other thread " << s.busiest_other / 1e6 << " ms";
}

TEST(OpenMP, OneRuntimeInTheProcess) {
  manifold_mixup::mix(torch::randn({kBatch, kFeatures}), torch::randperm(kBatch), torch::rand({kBatch}));
  std::ifstream maps("/proc/self/maps");
  if (!maps) GTEST_SKIP() << "no /proc/self/maps here";
  std::set<std::string> runtimes;
  for (std::string line; std::getline(maps, line);) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string file = path.substr(path.rfind('/') + 1);
    for (const char* name : {"libgomp", "libiomp", "libomp"}) {
      if (file.rfind(name, 0) == 0) runtimes.insert(path);
    }
  }
  EXPECT_LE(runtimes.size(), 1u) << "OpenMP runtimes loaded: " << testing::PrintToString(runtimes);
  if (AT_PARALLEL_OPENMP) EXPECT_EQ(runtimes.size(), 1u) << "torch's OpenMP runtime not found";
}

}  // namespace
