/*
 * manifold_mixup.h -- the C API of manifold-mixup: Manifold Mixup on libtorch modules, for
 * programs that train without Python (C, or Rust, Go, C#, Julia through a C FFI).
 *
 * One training step:
 *
 *   mm_mixer_config_init(&cfg, sizeof cfg);  mm_mixer_create(&cfg, &mixer);
 *   mm_module_load("model.pt", &module);
 *   mm_hook_install(mixer, module, names, n_names, &hook);   (names: dotted submodule paths)
 *   for each batch:
 *     mm_batch_begin(mixer, batch_size, NULL);      draws weights, permutation and the point
 *     mm_forward(mixer, module, x, &logits);        the chosen point mixes inside forward
 *     mm_mixed_cross_entropy(mixer, logits, y, &loss);   (or mm_mix_targets for regression)
 *     mm_module_zero_grad(module); mm_backward(loss); mm_sgd_step(module, lr);
 *     mm_batch_end(mixer);
 *   mm_hook_remove(hook);  destroy the tensors, the module and the mixer.
 *
 * Conventions, for every function below:
 *   - It returns an mm_status: MM_OK (0) on success, otherwise an error code, and then
 *     mm_last_error() tells why. The code comes from the kind of failure, never from the
 *     wording of a message. On failure, output arguments are left untouched and nothing is
 *     allocated. No C++ exception and no abort crosses this boundary.
 *   - Output arguments are checked before any work: a required one passed as NULL gives
 *     MM_ERR_NULL, and nothing was computed, allocated or changed.
 *   - MM_ERR_NOMEM: memory ran out (the CPU's or a GPU's), from any function that allocates;
 *     each lists it.
 *   - Handles (mm_mixer, mm_module, mm_hook, mm_tensor) are opaque. Whatever a function hands
 *     out through an `out` argument is owned by the caller and is freed with the matching
 *     *_destroy (or mm_hook_remove). The *_destroy functions accept NULL and do nothing.
 *   - Misused handles are refused, as sqlite's SQLITE_MISUSE: a handle used after its
 *     *_destroy (a hook after mm_hook_remove), or destroyed twice, gives MM_ERR_STATE, and a
 *     live handle of another kind passed in its place MM_ERR_ARG. This holds while the handle
 *     is among the last 1024 of its kind destroyed (the library keeps their memory for the
 *     check); beyond that, as for any freed or made-up pointer, the behaviour is undefined.
 *   - Strings returned as `const char*` are owned by the library; their lifetime is stated.
 *   - Handles may be used from any thread, but one handle must not be used by two threads
 *     at the same time.
 *   - Tensors and modules start on the CPU; mm_tensor_to_device and mm_module_to_device move
 *     them to a CUDA device, and mm_batch_begin_on begins a batch there.
 *   - A module file is trusted input, like a Python pickle: it holds code that runs when it is
 *     loaded and called. A damaged file is refused with an error where libtorch detects the
 *     damage, but some damaged files crash libtorch's reader, as they crash torch.jit.load.
 */
#ifndef MANIFOLD_MIXUP_H
#define MANIFOLD_MIXUP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(MM_BUILDING_LIBRARY)
#define MM_API __declspec(dllexport)
#elif defined(_WIN32)
#define MM_API __declspec(dllimport)
#elif defined(__GNUC__)
#define MM_API __attribute__((visibility("default")))
#else
#define MM_API
#endif

/* ---- versions ------------------------------------------------------------------------ */

#define MM_VERSION_MAJOR 0
#define MM_VERSION_MINOR 2
#define MM_VERSION_PATCH 0
#define MM_VERSION_NUMBER (MM_VERSION_MAJOR * 10000 + MM_VERSION_MINOR * 100 + MM_VERSION_PATCH)

/* The library's version as MM_VERSION_NUMBER computes it; compare with the header's to
 * detect a program running against another library than it was built with. */
MM_API unsigned mm_version(void);
/* The library's version as "MAJOR.MINOR.PATCH"; a static string. */
MM_API const char* mm_version_string(void);

/* ---- status and errors --------------------------------------------------------------- */

typedef enum mm_status {
  MM_OK = 0,
  MM_ERR_NULL = 1,      /* a required pointer argument was NULL */
  MM_ERR_ARG = 2,       /* an argument has a wrong value, dtype or shape */
  MM_ERR_STATE = 3,     /* a call out of order (e.g. a loss before mm_batch_begin) */
  MM_ERR_NOT_FOUND = 4, /* a named submodule or method does not exist */
  MM_ERR_TORCH = 5,     /* libtorch reported an error (the message is libtorch's) */
  MM_ERR_IO = 6,        /* a file could not be read or written */
  MM_ERR_NOMEM = 7,     /* out of memory */
  MM_ERR_INTERNAL = 8   /* anything else; please report it */
} mm_status;

/* A short constant name for a status ("MM_ERR_ARG"), or "unknown status". Static string. */
MM_API const char* mm_status_string(mm_status status);

/* The message of the last failed call on this thread ("" if none). The string stays valid
 * until the next failing call on the same thread; copy it to keep it. Never NULL. */
MM_API const char* mm_last_error(void);

/* ---- tensors --------------------------------------------------------------------------- */

typedef struct mm_tensor mm_tensor;

typedef enum mm_dtype {
  MM_FLOAT32 = 0,
  MM_FLOAT64 = 1,
  MM_INT64 = 2,
  MM_INT32 = 3,
  MM_UINT8 = 4
} mm_dtype;

/* Size in bytes of one element of `dtype`, or 0 for an unknown dtype. */
MM_API size_t mm_dtype_size(mm_dtype dtype);

/* Copies a C-contiguous host buffer of `ndim` dimensions `shape` (each >= 0, ndim in
 * [0, 8]) and `dtype` into a new CPU tensor *out. `data` may be NULL only when the tensor has
 * no elements. Errors: MM_ERR_NULL, MM_ERR_ARG (bad dtype, ndim or shape, or a shape whose
 * element or byte count overflows), MM_ERR_NOMEM (the tensor cannot be allocated). */
MM_API mm_status mm_tensor_from_host(const void* data, mm_dtype dtype, const int64_t* shape,
                                     int ndim, mm_tensor** out);

/* Copies the tensor's elements, in C order and in its own dtype, into `buffer`, whose size
 * `bytes` must be exactly numel * mm_dtype_size(dtype). Errors: MM_ERR_NULL, MM_ERR_ARG
 * (wrong size, or a dtype outside mm_dtype), MM_ERR_NOMEM (copying from a GPU). */
MM_API mm_status mm_tensor_to_host(const mm_tensor* tensor, void* buffer, size_t bytes);

/* The value of a tensor of one element, converted to double (e.g. a loss).
 * Errors: MM_ERR_NULL, MM_ERR_ARG (not exactly one element), MM_ERR_NOMEM. */
MM_API mm_status mm_tensor_item(const mm_tensor* tensor, double* value);

/* Number of dimensions, the size of dimension `dim` (negative counts from the end), the
 * number of elements, and the dtype. Errors: MM_ERR_NULL, MM_ERR_ARG (dim out of range;
 * a dtype outside mm_dtype). */
MM_API mm_status mm_tensor_ndim(const mm_tensor* tensor, int* ndim);
MM_API mm_status mm_tensor_size(const mm_tensor* tensor, int dim, int64_t* size);
MM_API mm_status mm_tensor_numel(const mm_tensor* tensor, int64_t* numel);
MM_API mm_status mm_tensor_dtype(const mm_tensor* tensor, mm_dtype* dtype);

/* DLPack: struct DLManagedTensor is the one from dlpack.h (libtorch ships it as
 * <ATen/dlpack.h>; any DLPack v0.x/v1.x header defines the same unversioned struct).
 * Include it before calling these two; this header only declares the name. */
struct DLManagedTensor;

/* Wraps `managed` as a tensor without copying. On success the tensor takes ownership: the
 * library calls managed->deleter(managed) once the tensor (and everything that shares its
 * memory) is destroyed; the caller must not call it. On failure ownership stays with the
 * caller. Errors: MM_ERR_NULL, MM_ERR_ARG (not a CPU tensor, or no data or shape),
 * MM_ERR_TORCH (a dtype libtorch does not support), MM_ERR_NOMEM. */
MM_API mm_status mm_tensor_from_dlpack(struct DLManagedTensor* managed, mm_tensor** out);

/* Exports the tensor's memory (no copy) as a new DLManagedTensor the caller owns: call
 * (*out)->deleter(*out) when done; the memory stays valid until then, even after
 * mm_tensor_destroy(tensor). Errors: MM_ERR_NULL (then nothing is exported), MM_ERR_TORCH,
 * MM_ERR_NOMEM. */
MM_API mm_status mm_tensor_to_dlpack(const mm_tensor* tensor, struct DLManagedTensor** out);

/* Frees the handle (the memory goes when nothing else shares it). NULL is a no-op.
 * Errors: MM_ERR_STATE (destroyed already). */
MM_API mm_status mm_tensor_destroy(mm_tensor* tensor);

/* A copy of `tensor` on `device` ("cpu", "cuda", "cuda:1"), owned by the caller. Errors:
 * MM_ERR_NULL, MM_ERR_ARG (a device string that is not "cpu" or "cuda[:N]", or CUDA asked
 * for where libtorch sees no GPU), MM_ERR_NOMEM (no room on the device for the copy).
 * mm_tensor_to_host copies back from any device. */
MM_API mm_status mm_tensor_to_device(const mm_tensor* tensor, const char* device, mm_tensor** out);

/* ---- the mixer ------------------------------------------------------------------------- */

typedef struct mm_mixer mm_mixer;

typedef enum mm_schedule_kind {
  MM_SCHEDULE_NONE = 0,        /* alpha stays as configured */
  MM_SCHEDULE_LINEAR = 1,      /* alpha_min + p * (alpha_max - alpha_min) */
  MM_SCHEDULE_COSINE = 2,      /* alpha_min + (1 + cos(pi * (1 - p))) * (alpha_max - alpha_min) / 2 */
  MM_SCHEDULE_EXPONENTIAL = 3, /* alpha_min * (alpha_max / alpha_min) ^ p */
  MM_SCHEDULE_POLYNOMIAL = 4   /* alpha_min + (alpha_max - alpha_min) * p ^ 2 */
} mm_schedule_kind;

/* How many draws of Beta(alpha, alpha) a batch takes. */
typedef enum mm_lambda_mode {
  MM_LAMBDA_SAMPLE = 0, /* one weight per sample (the reference fastai extension's) */
  MM_LAMBDA_BATCH = 1   /* one weight for the whole batch (the paper's code) */
} mm_lambda_mode;

/* What mixing does at the chosen point. */
typedef enum mm_method {
  MM_METHOD_MIXUP = 0,        /* lam[i] h[i] + (1 - lam[i]) h[perm[i]] over the whole output */
  MM_METHOD_PATCHUP_SOFT = 1, /* PatchUp: that mix inside blocks of feature maps [B, C, H, W] */
  MM_METHOD_PATCHUP_HARD = 2  /* PatchUp: the blocks swapped (h[perm[i]] inside them) */
} mm_method;

/* Configuration of a mixer. Fill it with mm_mixer_config_init(&cfg, sizeof cfg), then change
 * fields. `size` lets the struct grow: the library reads only the fields that lie wholly within
 * `size` bytes, so a program built against an older header, whose struct is smaller, gets the
 * defaults for the fields it does not have. Bytes beyond the library's own struct (a program
 * built against a newer header, run with an older library) must be zero, as
 * mm_mixer_config_init leaves them: a field this library does not know is refused, never
 * silently ignored. So that this holds for every setting, the fields after total_steps are
 * zero by default: a program that leaves them alone runs the same against a library that
 * predates them, and one that sets them is refused there. */
typedef struct mm_mixer_config {
  size_t size;          /* the caller's sizeof(mm_mixer_config), set by mm_mixer_config_init */
  double alpha;         /* Beta(alpha, alpha) weights; 0 means no mixing. Default 0.4 */
  int input_mixup;      /* nonzero: the input is one of the candidate points. Default 1 */
  int has_seed;         /* nonzero: draw from a generator seeded with `seed`, so runs repeat;
                           zero: from libtorch's default generator. Default 0 */
  uint64_t seed;        /* Default 0 */
  mm_schedule_kind schedule; /* Default MM_SCHEDULE_NONE; otherwise alpha follows the schedule
                                over total_steps batches (see mm_mixer_set_step) */
  double alpha_min;     /* Default 0.0; must be > 0 for MM_SCHEDULE_EXPONENTIAL */
  double alpha_max;     /* Default 0.6 */
  int64_t total_steps;  /* Default 0; must be >= 1 with a schedule */
  mm_lambda_mode lam_mode; /* Default MM_LAMBDA_SAMPLE */
  int no_fold;          /* nonzero: each weight as drawn (the paper's code); zero: folded to
                           max(lam, 1 - lam), so that each sample keeps the larger share. Default 0 */
  double skip_prob;     /* probability in [0, 1] that a batch does not mix at all: it draws no
                           weights, no permutation and no point (MM_POINT_NONE) and is counted in
                           mm_mixer_skipped_batches (Python's prob is 1 - skip_prob). Default 0 */
  double add_noise;     /* Noisy Feature Mixup (Lim et al.), MM_METHOD_MIXUP only: after the mix,
                           h <- (1 + mult_noise * s_m * U) * h + add_noise * s_a * N, with U
                           uniform on [-1, 1] and N normal per element and s_m, s_a ~ Beta(2, 5)
                           per batch, as the authors' code; >= 0. Default 0 (no noise) */
  double mult_noise;    /* Default 0 */
  mm_method method;     /* Default MM_METHOD_MIXUP. PatchUp (Faramarzi et al.) mixes only
                           outputs [B, C, H, W]: a point or input of another shape makes the
                           forward fail with MM_ERR_TORCH. Hard PatchUp draws no weights (lam is 0
                           in the blocks); alpha 0 still turns mixing off. The mixed losses weigh
                           the targets by the blocks' area (see mm_batch_target_weights) */
  int64_t patchup_block; /* PatchUp's block size, odd; 0 (default) means 7, the authors' default */
  double patchup_gamma; /* PatchUp's gamma in (0, 1]; 0 (default) means 0.9, the authors' default */
} mm_mixer_config;

/* Writes `size` bytes at config: the defaults in the fields that lie wholly within them,
 * zero elsewhere, and `size` in config->size. Pass sizeof of your struct. Errors: MM_ERR_NULL,
 * MM_ERR_ARG (size smaller than the size field). */
MM_API mm_status mm_mixer_config_init(mm_mixer_config* config, size_t size);

/* Creates a mixer. Errors: MM_ERR_NULL; MM_ERR_ARG (config->size smaller than the size field,
 * or a nonzero byte beyond the library's struct; alpha negative or not finite; a bad
 * schedule: an unknown kind, alpha_min or alpha_max negative or not finite, total_steps < 1,
 * or alpha_min 0 for the exponential one, which would stay 0; an unknown lam_mode; skip_prob
 * outside [0, 1]; add_noise or mult_noise negative or not finite, or set with PatchUp; an unknown
 * method, an even or negative patchup_block, patchup_gamma outside [0, 1]), MM_ERR_NOMEM. */
MM_API mm_status mm_mixer_create(const mm_mixer_config* config, mm_mixer** out);

/* Frees the mixer handle, ending its batch if one is open. An installed hook keeps what it
 * needs, so hooks may be removed after this. NULL is a no-op. Errors: MM_ERR_STATE (destroyed
 * already). */
MM_API mm_status mm_mixer_destroy(mm_mixer* mixer);

/* The current alpha; set it (>= 0, finite); set the schedule's progress to `step` batches.
 * With a schedule, alpha is the schedule's value at step / total_steps (clamped to 1) after
 * mm_mixer_set_step(mixer, step), and step 0 at creation; it moves only with
 * mm_mixer_set_step, not as batches begin: call it once per batch. mm_mixer_set_alpha sets
 * alpha until the next mm_mixer_set_step; without a schedule mm_mixer_set_step has no effect.
 * Errors: MM_ERR_NULL, MM_ERR_ARG (alpha negative or not finite; step negative). */
MM_API mm_status mm_mixer_alpha(const mm_mixer* mixer, double* alpha);
MM_API mm_status mm_mixer_set_alpha(mm_mixer* mixer, double alpha);
MM_API mm_status mm_mixer_set_step(mm_mixer* mixer, int64_t step);

/* Counters since creation: batches begun, batches whose input was mixed, and calls of the
 * chosen point after its first one in a forward (left unmixed: a module called twice per
 * forward).
 * Per-point counts: mm_hook_mix_count. Errors: MM_ERR_NULL. */
MM_API mm_status mm_mixer_batches(const mm_mixer* mixer, int64_t* count);
MM_API mm_status mm_mixer_input_mixes(const mm_mixer* mixer, int64_t* count);
MM_API mm_status mm_mixer_repeated_calls(const mm_mixer* mixer, int64_t* count);
/* Batches that chose a point (alpha > 0) but ended without mixing, because the chosen point
 * did not run in training mode in the batch's latest forward (a plain forward, evaluation mode,
 * a method that does not call it): they trained on the plain loss. Errors: MM_ERR_NULL. */
MM_API mm_status mm_mixer_unmixed_batches(const mm_mixer* mixer, int64_t* count);
/* Batches that skip_prob left unmixed (no point chosen, by design: not unmixed batches).
 * Errors: MM_ERR_NULL. */
MM_API mm_status mm_mixer_skipped_batches(const mm_mixer* mixer, int64_t* count);

/* The chosen point of a batch: an index of mm_hook_point_name, or one of these. */
#define MM_POINT_INPUT (-1) /* the input is mixed (by mm_forward) */
#define MM_POINT_NONE (-2)  /* nothing mixes (alpha is 0, or no candidate) */

/* Starts a batch of `batch_size` samples: unless skip_prob skips it, draws the weights lam ~
 * Beta(alpha, alpha) (one per sample, or one per batch; folded to max(lam, 1 - lam) unless
 * no_fold), a permutation of the batch, and the point that mixes (uniformly among the hook's
 * points and, if input_mixup, the input). Writes the point to
 * *chosen when chosen is not NULL. Until mm_batch_end, the chosen point mixes in every
 * forward pass that runs it in training mode, all but a plain one (see mm_forward), with the
 * batch's weights and permutation: once per mm_forward (its first call in that forward).
 * Alpha does not move here (see mm_mixer_set_step). Errors: MM_ERR_NULL (mixer),
 * MM_ERR_ARG (batch_size < 1, or more samples than memory can index: 12 bytes each),
 * MM_ERR_STATE (a batch has begun and not ended), MM_ERR_NOMEM (no room for the batch's
 * weights and permutation). */
MM_API mm_status mm_batch_begin(mm_mixer* mixer, int64_t batch_size, int64_t* chosen);

/* mm_batch_begin for a batch whose tensors live on `device` ("cpu", "cuda", "cuda:1"): the
 * weights and permutation are drawn there, so mixing needs no copy. Errors: as
 * mm_batch_begin, plus MM_ERR_NULL (device) and MM_ERR_ARG (a device string that is not
 * "cpu" or "cuda[:N]", or CUDA asked for where libtorch sees no GPU). */
MM_API mm_status mm_batch_begin_on(mm_mixer* mixer, int64_t batch_size, const char* device,
                                   int64_t* chosen);

/* Copies of the batch's weights (float32 [B]) and permutation (int64 [B]) as new tensors;
 * either output may be NULL (it is then not copied). Errors: MM_ERR_NULL (mixer),
 * MM_ERR_STATE (no batch), MM_ERR_NOMEM. */
MM_API mm_status mm_batch_weights(const mm_mixer* mixer, mm_tensor** lam, mm_tensor** perm);

/* A copy (float32 [B], new tensor) of the weight of each sample's own target in the mixed
 * losses and mm_mix_targets: lam, except for PatchUp after a forward that mixed:
 * 1 - changed * (1 - lam[i]), changed the fraction of features in the batch's blocks (soft: the
 * unchanged fraction plus lam of the changed one; hard: the unchanged fraction). Errors:
 * MM_ERR_NULL, MM_ERR_STATE (no batch). */
MM_API mm_status mm_batch_target_weights(const mm_mixer* mixer, mm_tensor** weights);

/* Whether the batch's latest forward mixed: *mixed is 1 once the chosen point has mixed in
 * it (a module point), or the batch's input was mixed (the input point), else 0. The mixed
 * losses and mm_mix_targets read the same answer, so each loss matches the forward before it,
 * and a forward that did not mix trains on the plain loss. Errors: MM_ERR_NULL, MM_ERR_STATE
 * (no batch). */
MM_API mm_status mm_batch_mixed(const mm_mixer* mixer, int* mixed);

/* Ends the batch: points stop mixing; a batch that chose a point and did not mix is counted in
 * mm_mixer_unmixed_batches. Errors: MM_ERR_NULL, MM_ERR_STATE (no batch). */
MM_API mm_status mm_batch_end(mm_mixer* mixer);

/* ---- modules --------------------------------------------------------------------------- */

typedef struct mm_module mm_module;

/* Loads a TorchScript module saved by torch.jit.save (or torch::jit::Module::save), on the
 * CPU, in training mode. The file is trusted input (see the conventions above).
 * Errors: MM_ERR_NULL, MM_ERR_IO (an empty path, no such file, a directory or other
 * non-regular file, or not readable), MM_ERR_TORCH (not a TorchScript archive, or its code
 * does not compile), MM_ERR_NOMEM. */
MM_API mm_status mm_module_load(const char* path, mm_module** out);

/* Wraps a module the host already holds. `torch_jit_module` must point to a live
 * torch::jit::Module (C++ type torch::jit::Module*, as from torch::jit::load) that was built
 * with the same libtorch as this library. The host keeps ownership of that object; the
 * mm_module shares the underlying module (hooks installed through it are visible to the
 * host's object) and stays valid if the host's object is destroyed first. While points are
 * installed, the host should call the module through Module::forward or run_method, not
 * through a torch::jit::Method taken before mm_hook_install (it would not mix) or kept after
 * mm_hook_remove (it would name a freed function). Errors: MM_ERR_NULL, MM_ERR_NOMEM. */
MM_API mm_status mm_module_borrow(void* torch_jit_module, mm_module** out);

/* Frees the handle. Hooks installed on the module stay until mm_hook_remove. NULL: no-op.
 * Errors: MM_ERR_STATE (destroyed already). */
MM_API mm_status mm_module_destroy(mm_module* module);

/* Saves the module as TorchScript at `path`, through a temporary file beside it (named
 * `path`.mm-save-*) that is flushed to the disk, then renamed over `path`: on failure an
 * existing file at `path` is left as it was, and the temporary file is removed. A file it
 * replaces keeps its permissions. Save after mm_hook_remove: a module saved with points
 * installed needs this library to load. Errors: MM_ERR_NULL, MM_ERR_IO (an empty path, the
 * directory cannot be written, `path` is a directory, an existing file there is not
 * writable, or a write fails: a full disk, a quota, the process's file-size limit), MM_ERR_TORCH
 * (libtorch cannot serialise the module), MM_ERR_NOMEM. Past a file-size limit (RLIMIT_FSIZE)
 * the system sends SIGXFSZ, whose default action ends the process before any write fails:
 * a host that sets such limits ignores the signal, as for any write. */
MM_API mm_status mm_module_save(const mm_module* module, const char* path);

/* Moves the module's parameters and buffers to `device` ("cpu", "cuda", "cuda:1"); its
 * inputs must then live there too (mm_tensor_to_device) and batches begin there
 * (mm_batch_begin_on). Errors: MM_ERR_NULL, MM_ERR_ARG (device, as mm_batch_begin_on),
 * MM_ERR_NOMEM (no room on the device). */
MM_API mm_status mm_module_to_device(mm_module* module, const char* device);

/* Training mode (nonzero) or evaluation mode (0), for the module and its submodules. In
 * evaluation mode nothing mixes. Errors: MM_ERR_NULL. */
MM_API mm_status mm_module_train(mm_module* module, int on);

/* Number of parameter tensors and of scalar parameters (elements) in the module.
 * Errors: MM_ERR_NULL. */
MM_API mm_status mm_module_parameter_count(const mm_module* module, int64_t* tensors,
                                           int64_t* elements);

/* Runs the module's forward on `input` and returns its output tensor in *out.
 * With mixer NULL: a plain forward, in which no point mixes, even while a batch is open (on
 * the calling thread: code the module runs elsewhere with torch.jit.fork is not covered).
 * With a mixer: a batch of it must have begun and dim 0 of input must be the batch size; the
 * input is mixed first when it is the chosen point, and the module's installed points mix. A
 * batch may run several forwards (SAM, consistency losses): each mixes at the chosen point.
 * In evaluation mode (mm_module_train(module, 0)) nothing mixes, the input included.
 * Points mix in any other forward pass too while their mixer's batch is open: in
 * mm_module_run_method, and in a host's own calls of a module it lent with mm_module_borrow.
 * Errors: MM_ERR_NULL; MM_ERR_STATE (mixer given and no batch); MM_ERR_ARG (input's dim 0 is
 * not the batch size); MM_ERR_TORCH (the module's forward failed, e.g. on an input of the
 * wrong shape or dtype, or returned no Tensor); MM_ERR_NOMEM. */
MM_API mm_status mm_forward(mm_mixer* mixer, mm_module* module, const mm_tensor* input,
                            mm_tensor** out);

/* Runs another method of the module (one exported with @torch.jit.export) on one tensor;
 * its installed points mix in it while their mixer's batch is open, in training mode.
 * Errors: MM_ERR_NULL, MM_ERR_NOT_FOUND (no such method), MM_ERR_TORCH (the method failed, or
 * returned no Tensor), MM_ERR_NOMEM. */
MM_API mm_status mm_module_run_method(mm_module* module, const char* method,
                                      const mm_tensor* input, mm_tensor** out);

/* Sets the gradient of every parameter to zero (frees it). Errors: MM_ERR_NULL. */
MM_API mm_status mm_module_zero_grad(mm_module* module);

/* Plain SGD on every parameter that has a gradient: p -= lr * grad. Errors: MM_ERR_NULL,
 * MM_ERR_ARG (lr negative or not finite). */
MM_API mm_status mm_sgd_step(mm_module* module, double lr);

/* ---- losses and gradients --------------------------------------------------------------- */

/* Mean over the batch of lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm]), the mixed
 * cross-entropy of logits (floating, [B, C]) against int64 class indices targets ([B]) on the
 * logits' device, as a new scalar tensor *loss. Call it after the batch's forward: when the
 * batch did not mix (see mm_batch_mixed) it is the plain mean CE(logits, y). Errors:
 * MM_ERR_NULL, MM_ERR_STATE (no batch), MM_ERR_ARG (dtypes, shapes, B not the batch size,
 * devices; on the CPU, a class index out of range), MM_ERR_NOMEM.
 * Class indices on a GPU are not read back to be checked, since that would make every step
 * wait for the GPU: an index out of range there trips libtorch's device-side assertion, which
 * the next call that waits for the GPU (mm_tensor_item, mm_tensor_to_host) reports as
 * MM_ERR_TORCH, and after which the process cannot use CUDA any more, as in PyTorch. */
MM_API mm_status mm_mixed_cross_entropy(const mm_mixer* mixer, const mm_tensor* logits,
                                        const mm_tensor* targets, mm_tensor** loss);

/* Plain mean cross-entropy (for evaluation), with the arguments and checks of
 * mm_mixed_cross_entropy. Errors: MM_ERR_NULL, MM_ERR_ARG, MM_ERR_NOMEM. */
MM_API mm_status mm_cross_entropy(const mm_tensor* logits, const mm_tensor* targets,
                                  mm_tensor** loss);

/* Regression: the targets mixed like the point (lam * y[i] + (1 - lam) * y[perm[i]] along
 * dim 0), as a new tensor; use them with the plain loss. Call it after the batch's forward:
 * when the batch did not mix (see mm_batch_mixed) the targets come back unchanged. Errors:
 * MM_ERR_NULL, MM_ERR_STATE (no batch), MM_ERR_ARG (not floating, or dim 0 not the batch size),
 * MM_ERR_NOMEM. */
MM_API mm_status mm_mix_targets(const mm_mixer* mixer, const mm_tensor* targets,
                                mm_tensor** mixed);

/* Mean squared error between two floating tensors of one shape, as a new scalar tensor.
 * Errors: MM_ERR_NULL, MM_ERR_ARG, MM_ERR_NOMEM. */
MM_API mm_status mm_mse_loss(const mm_tensor* prediction, const mm_tensor* target,
                             mm_tensor** loss);

/* Back-propagates a scalar loss into the gradients of the parameters it depends on
 * (accumulating, as libtorch does). Errors: MM_ERR_NULL, MM_ERR_ARG (not a scalar, or it
 * does not require grad), MM_ERR_NOMEM. */
MM_API mm_status mm_backward(const mm_tensor* loss);

/* ---- mixup points ----------------------------------------------------------------------- */

typedef struct mm_hook mm_hook;

/* Installs mixup points on `module` for `mixer` and returns the hook in *out.
 * names: n_names dotted paths of submodules ("layer2.1"), in the order of their point
 * indices. With n_names == 0 (names may then be NULL) the points are chosen by the selection
 * rules of the Python package, first rule that yields modules wins: submodules whose class
 * is named ManifoldMixupModule; else those whose class name contains "block" or
 * "bottleneck" (any case); else every submodule that is not a container, dropout, batch norm
 * or recurrent layer. mm_hook_selection tells which rule chose.
 * The module is rewritten so that each point's output passes through the mixer where its
 * parent calls it; only the named instances mix, also when other instances share their type.
 * Works on modules that have already run. One hook per mixer, and one per module type.
 * Errors: MM_ERR_NULL; MM_ERR_NOT_FOUND (a name is not a submodule: the message names it);
 * MM_ERR_ARG (a name given twice; a point whose forward does not return one Tensor, or that
 * no method calls (frozen module); no module to select); MM_ERR_STATE (the mixer is in a
 * batch or has a hook; another hook has a point on the same submodule, or rewrites the same
 * module types), MM_ERR_NOMEM. On failure the module is unchanged. */
MM_API mm_status mm_hook_install(mm_mixer* mixer, mm_module* module, const char* const* names,
                                 size_t n_names, mm_hook** out);

/* Removes the points: the module's methods are restored exactly as before installing, and
 * the hook is freed (also when the mixer or module handles were destroyed before). If the
 * mixer's batch is open, it is ended first: removal does not fail. NULL is a no-op.
 * Errors: MM_ERR_STATE (removed already). */
MM_API mm_status mm_hook_remove(mm_hook* hook);

/* Number of points; the dotted name of point i (valid until mm_hook_remove); how many
 * batches point i mixed in; which selection rule chose the points (a sentence, valid until
 * mm_hook_remove). Errors: MM_ERR_NULL, MM_ERR_ARG (i out of range). */
MM_API mm_status mm_hook_point_count(const mm_hook* hook, size_t* count);
MM_API mm_status mm_hook_point_name(const mm_hook* hook, size_t i, const char** name);
MM_API mm_status mm_hook_mix_count(const mm_hook* hook, size_t i, int64_t* count);
MM_API mm_status mm_hook_selection(const mm_hook* hook, const char** selection);

#ifdef __cplusplus
}
#endif

#endif /* MANIFOLD_MIXUP_H */
