// The C ABI over the C++ core: every function checks its arguments, runs its body inside
// guard(), which turns any exception into a status and a thread-local message, and never lets
// a C++ exception cross the boundary.
#include "manifold_mixup.h"

#include <ATen/ATen.h>
#include <ATen/DLConvertor.h>
#include <ATen/dlpack.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/serialization/import.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include "hooks.h"
#include "mixer.h"

struct mm_tensor {
  at::Tensor t;
};
struct mm_mixer {
  std::shared_ptr<manifold_mixup::Mixer> mixer;
};
struct mm_module {
  torch::jit::Module module;
};
struct mm_hook {
  std::unique_ptr<manifold_mixup::JitHook> hook;
};

namespace {

using manifold_mixup::Mixer;

thread_local std::string t_last_error;

// An error with a status other than MM_ERR_TORCH, raised by the checks below.
struct Failure {
  mm_status status;
  std::string message;
};

[[noreturn]] void fail(mm_status status, std::string message) { throw Failure{status, std::move(message)}; }

template <typename... Args>
void require(bool ok, mm_status status, const Args&... parts) {
  if (!ok) fail(status, c10::str(parts...));
}

#define MM_REQUIRE_NONNULL(p) require((p) != nullptr, MM_ERR_NULL, fn, ": " #p " is NULL")

// Runs `body`; turns whatever it throws into a status and the thread's last error. Each API
// function names itself in `fn` first: inside the lambda, __func__ would be "operator()".
template <typename F>
mm_status guard(const char* fn, F&& body) {
  try {
    body();
    return MM_OK;
  } catch (const Failure& f) {
    t_last_error = f.message;
    return f.status;
  } catch (const c10::Error& e) {
    t_last_error = std::string(fn) + ": " + e.what_without_backtrace();
    return MM_ERR_TORCH;
  } catch (const std::bad_alloc&) {
    t_last_error = std::string(fn) + ": out of memory";
    return MM_ERR_NOMEM;
  } catch (const std::exception& e) {
    t_last_error = std::string(fn) + ": " + e.what();
    return MM_ERR_INTERNAL;
  } catch (...) {
    t_last_error = std::string(fn) + ": unknown C++ exception";
    return MM_ERR_INTERNAL;
  }
}

// c10::Error from a check of the core whose message is the user's fault, not libtorch's.
template <typename F>
auto as_status(mm_status status, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const c10::Error& e) {
    fail(status, e.what_without_backtrace());
  }
}

at::ScalarType scalar_type(mm_dtype d) {
  switch (d) {
    case MM_FLOAT32: return at::kFloat;
    case MM_FLOAT64: return at::kDouble;
    case MM_INT64: return at::kLong;
    case MM_INT32: return at::kInt;
    case MM_UINT8: return at::kByte;
  }
  fail(MM_ERR_ARG, c10::str("unknown mm_dtype ", static_cast<int>(d)));
}

bool to_mm_dtype(at::ScalarType s, mm_dtype* out) {
  switch (s) {
    case at::kFloat: *out = MM_FLOAT32; return true;
    case at::kDouble: *out = MM_FLOAT64; return true;
    case at::kLong: *out = MM_INT64; return true;
    case at::kInt: *out = MM_INT32; return true;
    case at::kByte: *out = MM_UINT8; return true;
    default: return false;
  }
}

mm_tensor* new_tensor(at::Tensor t) { return new mm_tensor{std::move(t)}; }

// "cpu", "cuda" or "cuda:N", checked against what libtorch can reach here.
at::Device parse_device(const char* device, const char* fn) {
  require(device != nullptr, MM_ERR_NULL, fn, ": device is NULL");
  const auto bad = [&] {
    fail(MM_ERR_ARG, c10::str(fn, ": device must be \"cpu\" or \"cuda[:N]\", got \"", device, "\""));
  };
  at::Device d = at::kCPU;
  try {
    d = at::Device(std::string(device));
  } catch (const c10::Error&) {
    bad();
  }
  if (!d.is_cpu() && !d.is_cuda()) bad();
  if (d.is_cuda()) {
    const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
    require(n > 0, MM_ERR_ARG, fn, ": device \"", device, "\" asked for, but libtorch sees no CUDA ",
            "GPU here (no GPU, or a libtorch built without CUDA)");
    require(!d.has_index() || d.index() < n, MM_ERR_ARG, fn, ": device \"", device, "\" asked for, ",
            "but there are ", n, " CUDA devices");
  }
  return d;
}

const Mixer& in_batch(const mm_mixer* m, const char* fn) {
  require(m->mixer->in_batch(), MM_ERR_STATE, fn, ": no batch has begun (call mm_batch_begin first)");
  return *m->mixer;
}

void require_batch_dim(const at::Tensor& t, const Mixer& mixer, const char* fn, const char* what) {
  require(t.dim() >= 1 && t.size(0) == mixer.batch_size(), MM_ERR_ARG, fn, ": ", what,
          " must have the batch's ", mixer.batch_size(), " samples along dim 0, got shape ", t.sizes());
}

void require_ce_args(const at::Tensor& logits, const at::Tensor& targets, const char* fn) {
  require(at::isFloatingType(logits.scalar_type()) && logits.dim() == 2, MM_ERR_ARG, fn,
          ": logits must be a floating tensor [B, C], got ", logits.scalar_type(), " of shape ", logits.sizes());
  require(targets.scalar_type() == at::kLong && targets.dim() == 1 && targets.size(0) == logits.size(0),
          MM_ERR_ARG, fn, ": targets must be int64 class indices of shape [", logits.size(0), "], got ",
          targets.scalar_type(), " of shape ", targets.sizes());
  if (targets.numel() > 0) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
    require(lo >= 0 && hi < logits.size(1), MM_ERR_ARG, fn, ": targets must be class indices in [0, ",
            logits.size(1), "), got values in [", lo, ", ", hi, "]");
  }
}

}  // namespace

extern "C" {

// ---- versions and errors -----------------------------------------------------------------

unsigned mm_version(void) { return MM_VERSION_NUMBER; }

const char* mm_version_string(void) {
#define MM_STR2(x) #x
#define MM_STR(x) MM_STR2(x)
  return MM_STR(MM_VERSION_MAJOR) "." MM_STR(MM_VERSION_MINOR) "." MM_STR(MM_VERSION_PATCH);
}

const char* mm_status_string(mm_status status) {
  switch (status) {
    case MM_OK: return "MM_OK";
    case MM_ERR_NULL: return "MM_ERR_NULL";
    case MM_ERR_ARG: return "MM_ERR_ARG";
    case MM_ERR_STATE: return "MM_ERR_STATE";
    case MM_ERR_NOT_FOUND: return "MM_ERR_NOT_FOUND";
    case MM_ERR_TORCH: return "MM_ERR_TORCH";
    case MM_ERR_IO: return "MM_ERR_IO";
    case MM_ERR_NOMEM: return "MM_ERR_NOMEM";
    case MM_ERR_INTERNAL: return "MM_ERR_INTERNAL";
  }
  return "unknown status";
}

const char* mm_last_error(void) { return t_last_error.c_str(); }

// ---- tensors -----------------------------------------------------------------------------

size_t mm_dtype_size(mm_dtype dtype) {
  switch (dtype) {
    case MM_FLOAT32: case MM_INT32: return 4;
    case MM_FLOAT64: case MM_INT64: return 8;
    case MM_UINT8: return 1;
  }
  return 0;
}

mm_status mm_tensor_from_host(const void* data, mm_dtype dtype, const int64_t* shape, int ndim,
                              mm_tensor** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(out);
    const at::ScalarType st = scalar_type(dtype);
    require(ndim >= 0 && ndim <= 8, MM_ERR_ARG, fn, ": ndim must be in [0, 8], got ", ndim);
    require(ndim == 0 || shape != nullptr, MM_ERR_NULL, fn, ": shape is NULL");
    std::vector<int64_t> sizes(shape, shape + ndim);
    int64_t numel = 1;
    for (int i = 0; i < ndim; ++i) {
      require(sizes[i] >= 0, MM_ERR_ARG, fn, ": shape[", i, "] must be >= 0, got ", sizes[i]);
      numel *= sizes[i];
    }
    require(numel == 0 || data != nullptr, MM_ERR_NULL, fn, ": data is NULL");
    at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(st));
    if (numel > 0) std::memcpy(t.data_ptr(), data, static_cast<size_t>(numel) * mm_dtype_size(dtype));
    *out = new_tensor(std::move(t));
  });
}

mm_status mm_tensor_to_host(const mm_tensor* tensor, void* buffer, size_t bytes) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(buffer);
    mm_dtype d;
    require(to_mm_dtype(tensor->t.scalar_type(), &d), MM_ERR_ARG, fn, ": dtype ",
            tensor->t.scalar_type(), " has no mm_dtype");
    const size_t need = static_cast<size_t>(tensor->t.numel()) * mm_dtype_size(d);
    require(bytes == need, MM_ERR_ARG, fn, ": the buffer must be ", need, " bytes, got ", bytes);
    const at::Tensor c = tensor->t.detach().to(at::kCPU).contiguous();
    if (need > 0) std::memcpy(buffer, c.data_ptr(), need);
  });
}

mm_status mm_tensor_item(const mm_tensor* tensor, double* value) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(value);
    require(tensor->t.numel() == 1, MM_ERR_ARG, fn, ": the tensor must have one element, has ",
            tensor->t.numel());
    *value = tensor->t.detach().to(at::kDouble).item<double>();
  });
}

mm_status mm_tensor_ndim(const mm_tensor* tensor, int* ndim) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(ndim);
    *ndim = static_cast<int>(tensor->t.dim());
  });
}

mm_status mm_tensor_size(const mm_tensor* tensor, int dim, int64_t* size) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(size);
    const int64_t n = tensor->t.dim();
    require(dim >= -n && dim < n, MM_ERR_ARG, fn, ": dim ", dim, " out of range for a tensor of ",
            n, " dimensions");
    *size = tensor->t.size(dim);
  });
}

mm_status mm_tensor_numel(const mm_tensor* tensor, int64_t* numel) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(numel);
    *numel = tensor->t.numel();
  });
}

mm_status mm_tensor_dtype(const mm_tensor* tensor, mm_dtype* dtype) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(dtype);
    require(to_mm_dtype(tensor->t.scalar_type(), dtype), MM_ERR_ARG, fn, ": dtype ",
            tensor->t.scalar_type(), " has no mm_dtype");
  });
}

mm_status mm_tensor_from_dlpack(struct DLManagedTensor* managed, mm_tensor** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(managed);
    MM_REQUIRE_NONNULL(out);
    // fromDLPack's own checks (device, dtype) throw before it takes the deleter, so on
    // failure ownership stays with the caller; the checks here make those errors MM_ERR_ARG.
    const DLTensor& dl = managed->dl_tensor;
    require(dl.device.device_type == kDLCPU, MM_ERR_ARG, fn,
            ": only CPU DLPack tensors are supported, got device type ", static_cast<int>(dl.device.device_type));
    require(dl.ndim >= 0 && (dl.ndim == 0 || dl.shape != nullptr) && dl.data != nullptr, MM_ERR_ARG,
            fn, ": malformed DLTensor (ndim, shape or data)");
    auto holder = std::make_unique<mm_tensor>();
    holder->t = at::fromDLPack(managed);
    *out = holder.release();
  });
}

mm_status mm_tensor_to_dlpack(const mm_tensor* tensor, struct DLManagedTensor** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(out);
    *out = at::toDLPack(tensor->t.detach());
  });
}

mm_status mm_tensor_destroy(mm_tensor* tensor) {
  delete tensor;
  return MM_OK;
}

mm_status mm_tensor_to_device(const mm_tensor* tensor, const char* device, mm_tensor** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(tensor);
    MM_REQUIRE_NONNULL(out);
    const at::Device d = parse_device(device, fn);
    *out = new_tensor(tensor->t.to(d, /*non_blocking=*/false, /*copy=*/true));
  });
}

// ---- the mixer ---------------------------------------------------------------------------

mm_status mm_mixer_config_init(mm_mixer_config* config) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(config);
    std::memset(config, 0, sizeof *config);
    config->size = sizeof *config;
    config->alpha = 0.4;
    config->input_mixup = 1;
    config->schedule = MM_SCHEDULE_NONE;
    config->alpha_min = 0.0;
    config->alpha_max = 0.6;
  });
}

mm_status mm_mixer_create(const mm_mixer_config* config, mm_mixer** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(config);
    MM_REQUIRE_NONNULL(out);
    require(config->size == sizeof(mm_mixer_config), MM_ERR_ARG, fn, ": config->size is ",
            config->size, ", expected ", sizeof(mm_mixer_config), " (call mm_mixer_config_init)");
    require(config->schedule >= MM_SCHEDULE_NONE && config->schedule <= MM_SCHEDULE_POLYNOMIAL, MM_ERR_ARG,
            fn, ": unknown schedule kind ", static_cast<int>(config->schedule));
    manifold_mixup::MixerOptions o;
    o.alpha = config->alpha;
    o.input_mixup = config->input_mixup != 0;
    if (config->has_seed) o.seed = config->seed;
    o.schedule.kind = static_cast<manifold_mixup::ScheduleKind>(config->schedule);
    o.schedule.alpha_min = config->alpha_min;
    o.schedule.alpha_max = config->alpha_max;
    o.schedule.total_steps = config->total_steps;
    auto mixer = as_status(MM_ERR_ARG, [&] { return std::make_shared<Mixer>(o); });
    *out = new mm_mixer{std::move(mixer)};
  });
}

mm_status mm_mixer_destroy(mm_mixer* mixer) {
  delete mixer;
  return MM_OK;
}

mm_status mm_mixer_alpha(const mm_mixer* mixer, double* alpha) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    MM_REQUIRE_NONNULL(alpha);
    *alpha = mixer->mixer->alpha();
  });
}

mm_status mm_mixer_set_alpha(mm_mixer* mixer, double alpha) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    as_status(MM_ERR_ARG, [&] { mixer->mixer->set_alpha(alpha); });
  });
}

mm_status mm_mixer_set_step(mm_mixer* mixer, int64_t step) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    as_status(MM_ERR_ARG, [&] { mixer->mixer->set_step(step); });
  });
}

#define MM_COUNTER(name, expr)                              \
  mm_status name(const mm_mixer* mixer, int64_t* count) {   \
    const char* const fn = #name;                           \
    return guard(fn, [&] {                                  \
      MM_REQUIRE_NONNULL(mixer);                            \
      MM_REQUIRE_NONNULL(count);                            \
      *count = mixer->mixer->expr();                        \
    });                                                     \
  }
MM_COUNTER(mm_mixer_batches, batches)
MM_COUNTER(mm_mixer_input_mixes, input_mixes)
MM_COUNTER(mm_mixer_repeated_calls, repeated_calls)
#undef MM_COUNTER

namespace {
void begin_batch(mm_mixer* mixer, int64_t batch_size, at::Device device, int64_t* chosen,
                 const char* fn) {
  MM_REQUIRE_NONNULL(mixer);
  require(!mixer->mixer->in_batch(), MM_ERR_STATE, fn,
          ": the previous batch has not ended (call mm_batch_end first)");
  require(batch_size >= 1, MM_ERR_ARG, fn, ": batch_size must be >= 1, got ", batch_size);
  const int64_t c = mixer->mixer->begin_batch(batch_size, device);
  if (chosen) *chosen = c;
}
}  // namespace

mm_status mm_batch_begin(mm_mixer* mixer, int64_t batch_size, int64_t* chosen) {
  const char* const fn = __func__;
  return guard(fn, [&] { begin_batch(mixer, batch_size, at::kCPU, chosen, fn); });
}

mm_status mm_batch_begin_on(mm_mixer* mixer, int64_t batch_size, const char* device,
                            int64_t* chosen) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    begin_batch(mixer, batch_size, parse_device(device, fn), chosen, fn);
  });
}

mm_status mm_batch_weights(const mm_mixer* mixer, mm_tensor** lam, mm_tensor** perm) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    const Mixer& m = in_batch(mixer, fn);
    auto l = std::make_unique<mm_tensor>(mm_tensor{m.lam().clone()});
    auto p = std::make_unique<mm_tensor>(mm_tensor{m.perm().clone()});
    if (lam) *lam = l.release();
    if (perm) *perm = p.release();
  });
}

mm_status mm_batch_end(mm_mixer* mixer) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    in_batch(mixer, fn);
    mixer->mixer->end_batch();
  });
}

// ---- modules -----------------------------------------------------------------------------

mm_status mm_module_load(const char* path, mm_module** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(path);
    MM_REQUIRE_NONNULL(out);
    if (FILE* f = std::fopen(path, "rb")) std::fclose(f);
    else fail(MM_ERR_IO, c10::str(fn, ": cannot open '", path, "': ", std::strerror(errno)));
    auto m = std::make_unique<mm_module>(mm_module{torch::jit::load(path, at::kCPU)});
    m->module.train(true);
    *out = m.release();
  });
}

mm_status mm_module_borrow(void* torch_jit_module, mm_module** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(torch_jit_module);
    MM_REQUIRE_NONNULL(out);
    // A copy of the handle shares the module object: the host's changes and ours are one.
    *out = new mm_module{*static_cast<torch::jit::Module*>(torch_jit_module)};
  });
}

mm_status mm_module_destroy(mm_module* module) {
  delete module;
  return MM_OK;
}

mm_status mm_module_save(const mm_module* module, const char* path) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    MM_REQUIRE_NONNULL(path);
    if (FILE* f = std::fopen(path, "wb")) std::fclose(f);
    else fail(MM_ERR_IO, c10::str(fn, ": cannot write '", path, "': ", std::strerror(errno)));
    module->module.save(path);
  });
}

mm_status mm_module_to_device(mm_module* module, const char* device) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    module->module.to(parse_device(device, fn));
  });
}

mm_status mm_module_train(mm_module* module, int on) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    module->module.train(on != 0);
  });
}

mm_status mm_module_parameter_count(const mm_module* module, int64_t* tensors, int64_t* elements) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    int64_t n = 0, e = 0;
    for (const at::Tensor& p : module->module.parameters()) {
      ++n;
      e += p.numel();
    }
    if (tensors) *tensors = n;
    if (elements) *elements = e;
  });
}

mm_status mm_forward(mm_mixer* mixer, mm_module* module, const mm_tensor* input, mm_tensor** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    MM_REQUIRE_NONNULL(input);
    MM_REQUIRE_NONNULL(out);
    Mixer* m = nullptr;
    if (mixer) {
      m = const_cast<Mixer*>(&in_batch(mixer, fn));
      require_batch_dim(input->t, *m, fn, "the input");
    }
    at::Tensor y = manifold_mixup::forward(m, module->module, input->t);
    *out = new_tensor(std::move(y));
  });
}

mm_status mm_module_run_method(mm_module* module, const char* method, const mm_tensor* input,
                               mm_tensor** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    MM_REQUIRE_NONNULL(method);
    MM_REQUIRE_NONNULL(input);
    MM_REQUIRE_NONNULL(out);
    auto found = module->module.find_method(method);
    require(found.has_value(), MM_ERR_NOT_FOUND, fn, ": the module has no method '", method, "'");
    c10::IValue y = (*found)({input->t});
    require(y.isTensor(), MM_ERR_TORCH, fn, ": method '", method, "' returned ", y.tagKind(),
            ", not a Tensor");
    *out = new_tensor(y.toTensor());
  });
}

mm_status mm_module_zero_grad(mm_module* module) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    for (at::Tensor p : module->module.parameters()) p.mutable_grad() = at::Tensor();
  });
}

mm_status mm_sgd_step(mm_module* module, double lr) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(module);
    require(std::isfinite(lr) && lr >= 0, MM_ERR_ARG, fn, ": lr must be finite and >= 0, got ", lr);
    at::NoGradGuard no_grad;
    for (at::Tensor p : module->module.parameters())
      if (p.grad().defined()) p.sub_(p.grad(), lr);
  });
}

// ---- losses and gradients ------------------------------------------------------------------

mm_status mm_mixed_cross_entropy(const mm_mixer* mixer, const mm_tensor* logits, const mm_tensor* targets,
                                 mm_tensor** loss) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    MM_REQUIRE_NONNULL(logits);
    MM_REQUIRE_NONNULL(targets);
    MM_REQUIRE_NONNULL(loss);
    const Mixer& m = in_batch(mixer, fn);
    require_ce_args(logits->t, targets->t, fn);
    require_batch_dim(logits->t, m, fn, "logits");
    *loss = new_tensor(m.mixed_cross_entropy(logits->t, targets->t).mean());
  });
}

mm_status mm_cross_entropy(const mm_tensor* logits, const mm_tensor* targets, mm_tensor** loss) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(logits);
    MM_REQUIRE_NONNULL(targets);
    MM_REQUIRE_NONNULL(loss);
    require_ce_args(logits->t, targets->t, fn);
    *loss = new_tensor(at::cross_entropy_loss(logits->t, targets->t));
  });
}

mm_status mm_mix_targets(const mm_mixer* mixer, const mm_tensor* targets, mm_tensor** mixed) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    MM_REQUIRE_NONNULL(targets);
    MM_REQUIRE_NONNULL(mixed);
    const Mixer& m = in_batch(mixer, fn);
    require(at::isFloatingType(targets->t.scalar_type()), MM_ERR_ARG, fn,
            ": targets must be floating to be mixed, got ", targets->t.scalar_type());
    require_batch_dim(targets->t, m, fn, "targets");
    *mixed = new_tensor(m.mix_targets(targets->t));
  });
}

mm_status mm_mse_loss(const mm_tensor* prediction, const mm_tensor* target, mm_tensor** loss) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(prediction);
    MM_REQUIRE_NONNULL(target);
    MM_REQUIRE_NONNULL(loss);
    const at::Tensor &p = prediction->t, &t = target->t;
    require(at::isFloatingType(p.scalar_type()) && at::isFloatingType(t.scalar_type()) && p.sizes() == t.sizes(),
            MM_ERR_ARG, fn, ": prediction and target must be floating tensors of one shape, got ",
            p.scalar_type(), p.sizes(), " and ", t.scalar_type(), t.sizes());
    *loss = new_tensor(at::mse_loss(p, t));
  });
}

mm_status mm_backward(const mm_tensor* loss) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(loss);
    require(loss->t.numel() == 1, MM_ERR_ARG, fn, ": the loss must be a scalar, has ",
            loss->t.numel(), " elements");
    require(loss->t.requires_grad(), MM_ERR_ARG, fn,
            ": the loss does not require grad (no parameter in training reached it)");
    torch::autograd::backward({loss->t.reshape({})});
  });
}

// ---- mixup points ------------------------------------------------------------------------

mm_status mm_hook_install(mm_mixer* mixer, mm_module* module, const char* const* names, size_t n_names,
                          mm_hook** out) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(mixer);
    MM_REQUIRE_NONNULL(module);
    MM_REQUIRE_NONNULL(out);
    require(n_names == 0 || names != nullptr, MM_ERR_NULL, fn, ": names is NULL and n_names is ", n_names);
    std::vector<std::string> list;
    for (size_t i = 0; i < n_names; ++i) {
      require(names[i] != nullptr, MM_ERR_NULL, fn, ": names[", i, "] is NULL");
      list.emplace_back(names[i]);
    }
    require(!mixer->mixer->in_batch(), MM_ERR_STATE, fn,
            ": cannot install mixup points during a batch (call mm_batch_end first)");
    require(mixer->mixer->num_points() == 0, MM_ERR_STATE, fn,
            ": the mixer already has a hook (one hook per mixer; remove it first)");
    // The core's messages name the module; sort them into statuses by what went wrong.
    try {
      auto hook = std::make_unique<manifold_mixup::JitHook>(mixer->mixer, module->module, std::move(list));
      *out = new mm_hook{std::move(hook)};
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      mm_status s = MM_ERR_ARG;
      if (msg.rfind("no submodule named", 0) == 0) s = MM_ERR_NOT_FOUND;
      else if (msg.find("already") != std::string::npos) s = MM_ERR_STATE;
      fail(s, std::string(fn) + ": " + msg);
    }
  });
}

mm_status mm_hook_remove(mm_hook* hook) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    if (!hook) return;
    require(!hook->hook->mixer()->in_batch(), MM_ERR_STATE, fn,
            ": cannot remove mixup points during a batch (call mm_batch_end first)");
    hook->hook->remove();
    delete hook;
  });
}

mm_status mm_hook_point_count(const mm_hook* hook, size_t* count) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(hook);
    MM_REQUIRE_NONNULL(count);
    *count = hook->hook->point_names().size();
  });
}

mm_status mm_hook_point_name(const mm_hook* hook, size_t i, const char** name) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(hook);
    MM_REQUIRE_NONNULL(name);
    const auto& names = hook->hook->point_names();
    require(i < names.size(), MM_ERR_ARG, fn, ": point index ", i, " out of range [0, ", names.size(), ")");
    *name = names[i].c_str();
  });
}

mm_status mm_hook_mix_count(const mm_hook* hook, size_t i, int64_t* count) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(hook);
    MM_REQUIRE_NONNULL(count);
    const size_t n = hook->hook->point_names().size();
    require(i < n, MM_ERR_ARG, fn, ": point index ", i, " out of range [0, ", n, ")");
    *count = hook->hook->mix_count(i);
  });
}

mm_status mm_hook_selection(const mm_hook* hook, const char** selection) {
  const char* const fn = __func__;
  return guard(fn, [&] {
    MM_REQUIRE_NONNULL(hook);
    MM_REQUIRE_NONNULL(selection);
    *selection = hook->hook->selection().c_str();
  });
}

}  // extern "C"
