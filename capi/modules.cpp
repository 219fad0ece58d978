// The C ABI's modules: loading, borrowing and saving TorchScript modules, devices, training
// mode, forward passes and methods, and the plain SGD step.
#include <ATen/core/grad_mode.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/import.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "device.h"
#include "errors.h"
#include "forward.h"
#include "guard.h"
#include "handles.h"
#include "manifold_mixup.h"

using manifold_mixup::capi::guard;
using manifold_mixup::capi::live;
using manifold_mixup::capi::new_tensor;
using manifold_mixup::capi::nonnull;
using manifold_mixup::capi::run_torchscript;

namespace {

// A path libtorch may open for reading: a regular, readable file. (Given a directory,
// libtorch's reader reads uninitialised memory.)
void check_readable_file(const char* path) {
  struct stat st;
  MM_CHECK_IO(::stat(path, &st) == 0, "cannot open '", path, "': ", std::strerror(errno));
  MM_CHECK_IO(!S_ISDIR(st.st_mode), "cannot open '", path, "': it is a directory");
  MM_CHECK_IO(S_ISREG(st.st_mode), "cannot open '", path, "': not a regular file");
  FILE* f = std::fopen(path, "rb");
  MM_CHECK_IO(f != nullptr, "cannot open '", path, "': ", std::strerror(errno));
  std::fclose(f);
}

// A new, empty file beside `path` (same directory, so rename() is atomic), with the mode an
// existing `path` has (else the umask's), open for writing: its name and descriptor.
std::pair<std::string, int> create_temporary_beside(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  MM_CHECK_IO(!path.empty(), "cannot write '': the path is empty");
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  MM_CHECK_IO(!exists || !S_ISDIR(st.st_mode), "cannot write '", path, "': it is a directory");
  MM_CHECK_IO(!exists || ::access(path.c_str(), W_OK) == 0, "cannot write '", path, "': ", std::strerror(errno));
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::string tmp = path + ".mm-save-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno == EEXIST) continue;
    MM_CHECK_IO(fd >= 0, "cannot write '", path, "': ", std::strerror(errno));
    if (exists) (void)::fchmod(fd, st.st_mode & 07777);
    return {tmp, fd};
  }
  MM_CHECK_IO(false, "cannot write '", path, "': no free temporary name beside it");
  return {};
}

// Where libtorch's archive writer writes: the temporary file's descriptor. The writer must never
// see a failure: told of one (a short write), it throws, then throws again from its destructor,
// which ends the process. So a failed write is recorded here, the rest of the archive is
// discarded, and the save fails once the writer is done.
class ArchiveFile {
 public:
  explicit ArchiveFile(int fd) : fd_(fd) {}
  size_t write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    for (size_t left = n; left > 0 && error_ == 0;) {
      const ssize_t done = ::write(fd_, p, left);
      if (done < 0 && errno == EINTR) continue;
      if (done <= 0) {
        error_ = done < 0 ? errno : EIO;
        break;
      }
      p += done;
      left -= static_cast<size_t>(done);
    }
    return n;
  }
  // Flushes to the disk and closes; the first error of the whole save, or 0.
  int close() {
    if (error_ == 0 && ::fsync(fd_) != 0) error_ = errno;
    if (::close(fd_) != 0 && error_ == 0) error_ = errno;
    return error_;
  }

 private:
  int fd_;
  int error_ = 0;
};

}  // namespace

extern "C" {

mm_status mm_module_load(const char* path, mm_module** out) {
  return guard(__func__, [&] {
    nonnull(path, "path");
    nonnull(out, "out");
    check_readable_file(path);
    auto m = std::make_unique<mm_module>();
    m->module = run_torchscript([&] { return torch::jit::load(path, at::kCPU); });
    m->module.train(true);
    *out = m.release();
  });
}

mm_status mm_module_borrow(void* torch_jit_module, mm_module** out) {
  return guard(__func__, [&] {
    nonnull(torch_jit_module, "torch_jit_module");
    nonnull(out, "out");
    // A copy of the handle shares the module object: the host's changes and ours are one.
    *out = new mm_module{mm_module::kMagic, *static_cast<torch::jit::Module*>(torch_jit_module)};
  });
}

mm_status mm_module_destroy(mm_module* module) {
  return guard(__func__, [&] {
    if (!module) return;
    torch::jit::Module contents = std::move(live(module, "module").module);
    module->module = torch::jit::Module();
    manifold_mixup::capi::retire(module);
  });
}

mm_status mm_module_save(const mm_module* module, const char* path) {
  return guard(__func__, [&] {
    const torch::jit::Module& m = live(module, "module").module;
    nonnull(path, "path");
    // Into a temporary file, renamed over `path` once complete: a failing save leaves any
    // existing file as it was, and no temporary file.
    const auto [tmp, fd] = create_temporary_beside(path);
    ArchiveFile file(fd);
    try {
      try {
        run_torchscript([&] {
          torch::jit::ExportModule(m, [&](const void* data, size_t n) { return file.write(data, n); });
        });
      } catch (...) {
        file.close();
        throw;
      }
      const int error = file.close();
      MM_CHECK_IO(error == 0, "cannot write '", path, "': ", std::strerror(error));
      MM_CHECK_IO(std::rename(tmp.c_str(), path) == 0, "cannot write '", path, "': ", std::strerror(errno));
    } catch (...) {
      std::remove(tmp.c_str());
      throw;
    }
  });
}

mm_status mm_module_to_device(mm_module* module, const char* device) {
  return guard(__func__, [&] {
    torch::jit::Module& m = live(module, "module").module;
    m.to(manifold_mixup::capi::parse_device(device));
  });
}

mm_status mm_module_train(mm_module* module, int on) {
  return guard(__func__, [&] { live(module, "module").module.train(on != 0); });
}

mm_status mm_module_parameter_count(const mm_module* module, int64_t* tensors, int64_t* elements) {
  return guard(__func__, [&] {
    const torch::jit::Module& m = live(module, "module").module;
    int64_t n = 0, e = 0;
    for (const at::Tensor& p : m.parameters()) {
      ++n;
      e += p.numel();
    }
    if (tensors) *tensors = n;
    if (elements) *elements = e;
  });
}

mm_status mm_forward(mm_mixer* mixer, mm_module* module, const mm_tensor* input, mm_tensor** out) {
  return guard(__func__, [&] {
    torch::jit::Module& m = live(module, "module").module;
    const at::Tensor& x = live(input, "input").t;
    nonnull(out, "out");
    manifold_mixup::Mixer* mx = mixer ? live(mixer, "mixer").mixer.get() : nullptr;
    *out = new_tensor(run_torchscript([&] { return manifold_mixup::forward(mx, m, x); }));
  });
}

mm_status mm_module_run_method(mm_module* module, const char* method, const mm_tensor* input,
                               mm_tensor** out) {
  return guard(__func__, [&] {
    torch::jit::Module& m = live(module, "module").module;
    nonnull(method, "method");
    const at::Tensor& x = live(input, "input").t;
    nonnull(out, "out");
    auto found = m.find_method(method);
    MM_CHECK_NOT_FOUND(found.has_value(), "the module has no method '", method, "'");
    const c10::IValue y = run_torchscript([&] { return (*found)({x}); });
    TORCH_CHECK(y.isTensor(), "method '", method, "' returned ", y.tagKind(), ", not a Tensor");
    *out = new_tensor(y.toTensor());
  });
}

mm_status mm_module_zero_grad(mm_module* module) {
  return guard(__func__, [&] {
    for (at::Tensor p : live(module, "module").module.parameters()) p.mutable_grad() = at::Tensor();
  });
}

mm_status mm_sgd_step(mm_module* module, double lr) {
  return guard(__func__, [&] {
    torch::jit::Module& m = live(module, "module").module;
    MM_CHECK_ARG(std::isfinite(lr) && lr >= 0, "lr must be finite and >= 0, got ", lr);
    at::NoGradGuard no_grad;
    for (at::Tensor p : m.parameters())
      if (p.grad().defined()) p.sub_(p.grad(), lr);
  });
}

}  // extern "C"
