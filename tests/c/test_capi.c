/* Tests of the C API, in C, against the library only. Usage: test_capi MODEL_DIR [CASE...]
 * runs the named cases (all without names; ctest runs a few under valgrind, see CMakeLists.txt).
 * The models come from make_models.py. Each case prints "ok" or what failed; the exit status
 * is the failure count. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <ATen/dlpack.h>

#include "manifold_mixup.h"

static const char* g_dir;
static int g_case_failed;

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      printf("    %s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
             mm_last_error());                                                         \
      g_case_failed = 1;                                                               \
      goto done;                                                                       \
    }                                                                                  \
  } while (0)
#define CHECK_OK(call) CHECK((call) == MM_OK)
#define CHECK_STATUS(call, status) CHECK((call) == (status))
#define CHECK_MSG(text) CHECK(strstr(mm_last_error(), (text)) != NULL)

enum { B = 6, D = 4, C = 3 };

static const char* model_path(const char* name) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/%s.pt", g_dir, name);
  return path;
}

/* A fixed batch x [B, D]. */
static mm_tensor* make_input(void) {
  float x[B * D];
  int64_t shape[2] = {B, D};
  mm_tensor* t = NULL;
  int i;
  for (i = 0; i < B * D; ++i) x[i] = (float)sin(0.7 * i + 0.3) * 2.0f;
  if (mm_tensor_from_host(x, MM_FLOAT32, shape, 2, &t) != MM_OK) return NULL;
  return t;
}

static mm_tensor* make_targets(void) {
  int64_t y[B], shape[1] = {B};
  mm_tensor* t = NULL;
  int i;
  for (i = 0; i < B; ++i) y[i] = i % C;
  if (mm_tensor_from_host(y, MM_INT64, shape, 1, &t) != MM_OK) return NULL;
  return t;
}

static mm_mixer* make_mixer(double alpha, int input_mixup) {
  mm_mixer_config cfg;
  mm_mixer* m = NULL;
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.alpha = alpha;
  cfg.input_mixup = input_mixup;
  cfg.has_seed = 1;
  cfg.seed = 1234;
  if (mm_mixer_create(&cfg, &m) != MM_OK) return NULL;
  return m;
}

/* out [B, C] of a plain forward, into buf. */
static int plain_forward(mm_module* mod, const mm_tensor* x, float* buf) {
  mm_tensor* y = NULL;
  int ok = mm_forward(NULL, mod, x, &y) == MM_OK &&
           mm_tensor_to_host(y, buf, sizeof(float) * B * C) == MM_OK;
  mm_tensor_destroy(y);
  return ok;
}

/* Forward in a batch of `mixer`, into buf; writes lam and perm of the batch. */
static int batch_forward(mm_mixer* mixer, mm_module* mod, const mm_tensor* x, float* buf,
                         float* lam, int64_t* perm, int64_t* chosen) {
  mm_tensor *y = NULL, *l = NULL, *p = NULL;
  int ok = mm_batch_begin(mixer, B, chosen) == MM_OK && mm_forward(mixer, mod, x, &y) == MM_OK &&
           mm_tensor_to_host(y, buf, sizeof(float) * B * C) == MM_OK &&
           mm_batch_weights(mixer, &l, &p) == MM_OK &&
           mm_tensor_to_host(l, lam, sizeof(float) * B) == MM_OK &&
           mm_tensor_to_host(p, perm, sizeof(int64_t) * B) == MM_OK && mm_batch_end(mixer) == MM_OK;
  mm_tensor_destroy(y);
  mm_tensor_destroy(l);
  mm_tensor_destroy(p);
  return ok;
}

/* `steps` SGD steps on the batch (x, y) with the mixed loss; the first and last losses. */
static int train_steps(mm_mixer* mixer, mm_module* mod, const mm_tensor* x, const mm_tensor* y,
                       int steps, double lr, double* first, double* last) {
  int step, ok = 1;
  for (step = 0; ok && step < steps; ++step) {
    mm_tensor *out = NULL, *loss = NULL;
    double v = 0;
    ok = mm_batch_begin(mixer, B, NULL) == MM_OK && mm_forward(mixer, mod, x, &out) == MM_OK &&
         mm_mixed_cross_entropy(mixer, out, y, &loss) == MM_OK && mm_tensor_item(loss, &v) == MM_OK &&
         mm_module_zero_grad(mod) == MM_OK && mm_backward(loss) == MM_OK &&
         mm_sgd_step(mod, lr) == MM_OK && mm_batch_end(mixer) == MM_OK;
    if (step == 0) *first = v;
    *last = v;
    mm_tensor_destroy(out);
    mm_tensor_destroy(loss);
  }
  return ok;
}

static double max_diff(const float* a, const float* b, int n) {
  double d = 0;
  int i;
  for (i = 0; i < n; ++i)
    if (fabs((double)a[i] - b[i]) > d) d = fabs((double)a[i] - b[i]);
  return d;
}

/* out[i] = lam[i] * y[i] + (1 - lam[i]) * y[perm[i]], rows of C. */
static void mix_rows(const float* y, const float* lam, const int64_t* perm, float* out) {
  int i, j;
  for (i = 0; i < B; ++i)
    for (j = 0; j < C; ++j) out[i * C + j] = lam[i] * y[i * C + j] + (1 - lam[i]) * y[perm[i] * C + j];
}

static int lam_not_all_one(const float* lam) {
  int i;
  for (i = 0; i < B; ++i)
    if (lam[i] < 0.999f) return 1;
  return 0;
}

/* Installs `name` on `model` with alpha > 0 and no input mixup (so the point always mixes),
 * and reports whether the output is exactly the plain output mixed (affine tail after the point). */
static int mixed_equals_mixed_plain(const char* model, const char* name, int* equal, int* differs,
                                    int64_t* mixes, int64_t* repeated) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(1.0, 0);
  mm_hook* hook = NULL;
  mm_tensor* x = make_input();
  float plain[B * C], out[B * C], expect[B * C], lam[B];
  int64_t perm[B], chosen = 0;
  int ok = mixer && x && mm_module_load(model_path(model), &mod) == MM_OK &&
           plain_forward(mod, x, plain) && /* a forward before installing: plans are cached */
           mm_hook_install(mixer, mod, &name, 1, &hook) == MM_OK &&
           batch_forward(mixer, mod, x, out, lam, perm, &chosen) && chosen == 0 &&
           lam_not_all_one(lam) && mm_hook_mix_count(hook, 0, mixes) == MM_OK &&
           mm_mixer_repeated_calls(mixer, repeated) == MM_OK;
  if (ok) {
    mix_rows(plain, lam, perm, expect);
    *equal = max_diff(out, expect, B * C) < 1e-5;
    *differs = max_diff(out, plain, B * C) > 1e-4;
  }
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
  return ok;
}

/* ---- cases -------------------------------------------------------------------------------- */

static void test_version(void) {
  CHECK(mm_version() == MM_VERSION_NUMBER);
  {
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", MM_VERSION_MAJOR, MM_VERSION_MINOR, MM_VERSION_PATCH);
    CHECK(strcmp(mm_version_string(), want) == 0);
  }
  CHECK(strcmp(mm_status_string(MM_ERR_STATE), "MM_ERR_STATE") == 0);
  CHECK(strcmp(mm_status_string((mm_status)99), "unknown status") == 0);
done:;
}

static void test_install_by_name_mixes_only_at_the_point(void) {
  int equal = 0, differs = 0;
  int64_t mixes = 0, repeated = 0;
  /* At l2 (affine tail l3): the output is the plain output mixed, so nothing before l2 mixed. */
  CHECK(mixed_equals_mixed_plain("mlp", "l2", &equal, &differs, &mixes, &repeated));
  CHECK(equal && differs && mixes == 1 && repeated == 0);
  /* At l1 (a relu follows): the output is mixed, but not as a mix of the plain output. */
  CHECK(mixed_equals_mixed_plain("mlp", "l1", &equal, &differs, &mixes, &repeated));
  CHECK(!equal && differs && mixes == 1);
done:;
}

/* In a batch where l2 mixes, the layers before it (the exported method trunk) compute what
 * they compute outside a batch. */
static void test_layers_before_the_point_are_unchanged(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(1.0, 0);
  mm_hook* hook = NULL;
  mm_tensor *x = make_input(), *h = NULL;
  const char* name = "l2";
  float plain[B * 8], inside[B * 8];
  int64_t chosen = -5, mixes = 0;
  CHECK(mixer && x);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK_OK(mm_module_run_method(mod, "trunk", x, &h));
  CHECK_OK(mm_tensor_to_host(h, plain, sizeof plain));
  mm_tensor_destroy(h);
  h = NULL;
  CHECK_OK(mm_batch_begin(mixer, B, &chosen));
  CHECK(chosen == 0);
  CHECK_OK(mm_forward(mixer, mod, x, &h)); /* l2 mixes here */
  mm_tensor_destroy(h);
  h = NULL;
  CHECK_OK(mm_module_run_method(mod, "trunk", x, &h));
  CHECK_OK(mm_tensor_to_host(h, inside, sizeof inside));
  CHECK_OK(mm_batch_end(mixer));
  CHECK_OK(mm_hook_mix_count(hook, 0, &mixes));
  CHECK(mixes == 1 && max_diff(plain, inside, B * 8) == 0.0);
done:
  mm_tensor_destroy(h);
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
}

static void test_alpha_zero_is_the_plain_forward(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(0.0, 1);
  mm_hook* hook = NULL;
  mm_tensor* x = make_input();
  const char* names[] = {"l1", "l2"};
  float plain[B * C], out[B * C], lam[B];
  int64_t perm[B], chosen = 0, mixes = -1, input_mixes = -1;
  CHECK(mixer && x);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK(plain_forward(mod, x, plain));
  CHECK_OK(mm_hook_install(mixer, mod, names, 2, &hook));
  CHECK(batch_forward(mixer, mod, x, out, lam, perm, &chosen));
  CHECK(chosen == MM_POINT_NONE);
  CHECK(max_diff(out, plain, B * C) == 0.0);
  CHECK_OK(mm_hook_mix_count(hook, 0, &mixes));
  CHECK_OK(mm_mixer_input_mixes(mixer, &input_mixes));
  CHECK(mixes == 0 && input_mixes == 0);
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
}

static void test_shared_type_only_the_named_instance_mixes(void) {
  int equal = 0, differs = 0;
  int64_t mixes = 0, repeated = 0;
  /* s1 and s2 share the Block type: the rewrite is in Block's graph, used by both. */
  CHECK(mixed_equals_mixed_plain("shared", "s2.inner", &equal, &differs, &mixes, &repeated));
  CHECK(equal && differs && mixes == 1 && repeated == 0);
  CHECK(mixed_equals_mixed_plain("shared", "s1.inner", &equal, &differs, &mixes, &repeated));
  CHECK(!equal && differs && mixes == 1 && repeated == 0);
done:;
}

/* Installs with no names on `model` and checks the count, one point's name and the rule. */
static void check_selection(mm_mixer* mixer, const char* model, size_t count, size_t index,
                            const char* name, const char* rule_word) {
  mm_module* mod = NULL;
  mm_hook* hook = NULL;
  size_t n = 0;
  const char *got = NULL, *rule = NULL;
  CHECK_OK(mm_module_load(model_path(model), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, NULL, 0, &hook));
  CHECK_OK(mm_hook_point_count(hook, &n));
  CHECK(n == count);
  CHECK_OK(mm_hook_point_name(hook, index, &got));
  CHECK(strcmp(got, name) == 0);
  CHECK_OK(mm_hook_selection(hook, &rule));
  CHECK(strstr(rule, rule_word) != NULL);
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
}

static void test_install_automatically(void) {
  mm_mixer* mixer = make_mixer(0.4, 1);
  CHECK(mixer);
  check_selection(mixer, "mlp", 3, 2, "l3", "mixable");          /* every mixable module */
  check_selection(mixer, "shared", 2, 0, "s1", "block");         /* class names with block */
  check_selection(mixer, "marked", 1, 0, "wrapped", "ManifoldMixupModule"); /* the marker wins */
done:
  mm_mixer_destroy(mixer);
}

/* A ResNet: blocks chosen by class name, points deep inside Sequential stages, training steps. */
static void test_resnet(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(1.0, 1);
  mm_hook* hook = NULL;
  mm_tensor *x = NULL, *y = make_targets();
  const char* names[] = {"layer1.1", "layer2.0.conv1", "layer2.0.downsample.1", "fc"};
  float img[B * 8 * 8];
  int64_t shape[4] = {B, 1, 8, 8}, count = 0, total = 0;
  size_t i;
  double first = 0, last = 0;
  for (i = 0; i < sizeof img / sizeof img[0]; ++i) img[i] = (float)cos(0.37 * (double)i);
  CHECK(mixer && y);
  CHECK_OK(mm_tensor_from_host(img, MM_FLOAT32, shape, 4, &x));
  check_selection(mixer, "resnet", 4, 3, "layer2.1", "block");
  CHECK_OK(mm_module_load(model_path("resnet"), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, names, 4, &hook));
  CHECK(train_steps(mixer, mod, x, y, 20, 0.05, &first, &last));
  for (i = 0; i < 4; ++i) {
    CHECK_OK(mm_hook_mix_count(hook, i, &count));
    total += count;
  }
  CHECK_OK(mm_mixer_input_mixes(mixer, &count));
  CHECK(total + count == 20);
  CHECK_OK(mm_mixer_repeated_calls(mixer, &count));
  CHECK(count == 0);
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
  mm_tensor_destroy(y);
}

static void test_remove_restores(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(1.0, 0);
  mm_hook* hook = NULL;
  mm_tensor* x = make_input();
  const char* names[] = {"s1.inner", "s2"};
  float plain[B * C], out[B * C], lam[B];
  int64_t perm[B], chosen = 0, batches = 0;
  CHECK(mixer && x);
  CHECK_OK(mm_module_load(model_path("shared"), &mod));
  CHECK(plain_forward(mod, x, plain));
  CHECK_OK(mm_hook_install(mixer, mod, names, 2, &hook));
  CHECK(batch_forward(mixer, mod, x, out, lam, perm, &chosen));
  CHECK(max_diff(out, plain, B * C) > 1e-4);
  CHECK_OK(mm_hook_remove(hook));
  hook = NULL;
  /* The module computes what it did before, also in a batch of the same mixer. */
  CHECK(plain_forward(mod, x, out));
  CHECK(max_diff(out, plain, B * C) == 0.0);
  CHECK(batch_forward(mixer, mod, x, out, lam, perm, &chosen));
  CHECK(chosen == MM_POINT_NONE && max_diff(out, plain, B * C) == 0.0);
  CHECK_OK(mm_mixer_batches(mixer, &batches));
  CHECK(batches == 2);
  /* And can be instrumented again. */
  CHECK_OK(mm_hook_install(mixer, mod, names, 2, &hook));
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
}

static void test_second_call_in_a_batch_does_not_mix(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(1.0, 0);
  mm_hook* hook = NULL;
  mm_tensor* x = make_input();
  const char* name = "l";
  float out[B * C], lam[B];
  int64_t perm[B], chosen = 0, mixes = 0, repeated = 0;
  CHECK(mixer && x);
  CHECK_OK(mm_module_load(model_path("twice"), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK(batch_forward(mixer, mod, x, out, lam, perm, &chosen));
  CHECK_OK(mm_hook_mix_count(hook, 0, &mixes));
  CHECK_OK(mm_mixer_repeated_calls(mixer, &repeated));
  CHECK(mixes == 1 && repeated == 1);
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
}

/* A few SGD steps with the mixed loss lower it; input mixup counts; the weights change. */
static void test_training_step(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(0.4, 1);
  mm_hook* hook = NULL;
  mm_tensor *x = make_input(), *y = make_targets(), *out = NULL, *loss = NULL;
  const char* names[] = {"l1", "l2"};
  double first = 0, last = 0, v = 0;
  int64_t total = 0, m0 = 0, m1 = 0, inputs = 0, n_tensors = 0, n_elems = 0;
  CHECK(mixer && x && y);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(mm_module_parameter_count(mod, &n_tensors, &n_elems));
  CHECK(n_tensors == 6 && n_elems == 4 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3);
  CHECK_OK(mm_hook_install(mixer, mod, names, 2, &hook));
  CHECK(train_steps(mixer, mod, x, y, 30, 0.2, &first, &last));
  CHECK_OK(mm_hook_mix_count(hook, 0, &m0));
  CHECK_OK(mm_hook_mix_count(hook, 1, &m1));
  CHECK_OK(mm_mixer_input_mixes(mixer, &inputs));
  total = m0 + m1 + inputs;
  CHECK(total == 30 && m0 > 0 && m1 > 0 && inputs > 0);
  /* Plain loss after training is lower than the first mixed loss. */
  CHECK_OK(mm_forward(NULL, mod, x, &out));
  CHECK_OK(mm_cross_entropy(out, y, &loss));
  CHECK_OK(mm_tensor_item(loss, &v));
  CHECK(v < first && last < first);
done:
  mm_tensor_destroy(out);
  mm_tensor_destroy(loss);
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
  mm_tensor_destroy(y);
}

static void test_regression_targets_and_schedule(void) {
  mm_mixer_config cfg;
  mm_mixer* mixer = NULL;
  mm_tensor *t = NULL, *mixed = NULL, *lam_t = NULL, *perm_t = NULL, *loss = NULL;
  mm_tensor *x = make_input(), *out = NULL;
  mm_module* mod = NULL;
  float y[B * C], got[B * C], expect[B * C], lam[B];
  int64_t perm[B], shape[2] = {B, C};
  double alpha = -1, v = -1;
  int i;
  for (i = 0; i < B * C; ++i) y[i] = (float)i;
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.schedule = MM_SCHEDULE_LINEAR;
  cfg.alpha_min = 0.0;
  cfg.alpha_max = 1.0;
  cfg.total_steps = 10;
  cfg.has_seed = 1;
  CHECK_OK(mm_mixer_create(&cfg, &mixer));
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(alpha == 0.0);
  CHECK_OK(mm_mixer_set_step(mixer, 5));
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(fabs(alpha - 0.5) < 1e-12);
  CHECK_OK(mm_tensor_from_host(y, MM_FLOAT32, shape, 2, &t));
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(mm_batch_begin(mixer, B, NULL));
  /* The targets are mixed only once the batch has mixed (here the input, its one candidate). */
  CHECK_OK(mm_mix_targets(mixer, t, &mixed));
  CHECK_OK(mm_tensor_to_host(mixed, got, sizeof got));
  CHECK(max_diff(got, y, B * C) == 0);
  mm_tensor_destroy(mixed);
  mixed = NULL;
  CHECK_OK(mm_forward(mixer, mod, x, &out));
  CHECK_OK(mm_mix_targets(mixer, t, &mixed));
  CHECK_OK(mm_batch_weights(mixer, &lam_t, &perm_t));
  CHECK_OK(mm_tensor_to_host(mixed, got, sizeof got));
  CHECK_OK(mm_tensor_to_host(lam_t, lam, sizeof lam));
  CHECK_OK(mm_tensor_to_host(perm_t, perm, sizeof perm));
  mix_rows(y, lam, perm, expect);
  CHECK(max_diff(got, expect, B * C) < 1e-4);
  CHECK_OK(mm_mse_loss(mixed, t, &loss));
  CHECK_OK(mm_tensor_item(loss, &v));
  CHECK(v >= 0);
  CHECK_OK(mm_batch_end(mixer));
done:
  mm_tensor_destroy(t);
  mm_tensor_destroy(mixed);
  mm_tensor_destroy(lam_t);
  mm_tensor_destroy(perm_t);
  mm_tensor_destroy(loss);
  mm_tensor_destroy(x);
  mm_tensor_destroy(out);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
}

static void test_tensors_host_and_dlpack(void) {
  double data[6] = {1, 2, 3, 4, 5, 6}, back[6] = {0};
  int64_t shape[2] = {2, 3}, size = 0, numel = 0;
  mm_tensor *t = NULL, *u = NULL;
  struct DLManagedTensor* dl = NULL;
  mm_dtype dt = MM_UINT8;
  int nd = 0;
  CHECK_OK(mm_tensor_from_host(data, MM_FLOAT64, shape, 2, &t));
  CHECK_OK(mm_tensor_ndim(t, &nd));
  CHECK_OK(mm_tensor_size(t, -1, &size));
  CHECK_OK(mm_tensor_numel(t, &numel));
  CHECK_OK(mm_tensor_dtype(t, &dt));
  CHECK(nd == 2 && size == 3 && numel == 6 && dt == MM_FLOAT64);
  /* Out through DLPack, back in, and the memory is the same. */
  CHECK_OK(mm_tensor_to_dlpack(t, &dl));
  CHECK(dl->dl_tensor.ndim == 2 && dl->dl_tensor.shape[1] == 3 && dl->dl_tensor.dtype.bits == 64);
  CHECK(((double*)dl->dl_tensor.data)[4] == 5.0);
  CHECK_OK(mm_tensor_destroy(t));
  t = NULL;
  CHECK_OK(mm_tensor_from_dlpack(dl, &u));
  dl = NULL; /* owned by u now */
  CHECK_OK(mm_tensor_to_host(u, back, sizeof back));
  CHECK(memcmp(back, data, sizeof data) == 0);
done:
  if (dl) dl->deleter(dl);
  mm_tensor_destroy(t);
  mm_tensor_destroy(u);
}

/* Every misuse returns an error and a message; nothing crashes. */
static void test_errors(void) {
  mm_module *mod = NULL, *tup = NULL, *other = NULL;
  mm_mixer *mixer = make_mixer(0.4, 1), *mixer2 = make_mixer(0.4, 1);
  mm_hook *hook = NULL, *hook2 = NULL;
  mm_tensor *x = make_input(), *y = make_targets(), *out = NULL, *loss = NULL, *bad = NULL;
  mm_mixer_config cfg;
  const char* unknown[] = {"l2", "layer9.1"};
  const char* twice[] = {"l1", "l1"};
  const char* pair = "pair";
  const char* null_name[] = {NULL};
  float f = 0, small[3] = {0};
  int32_t labels32[B] = {0};
  int64_t shape1[1] = {B}, shape_bad[2] = {B, -1}, bad_labels[B] = {0, 1, 2, 3, 0, 1}, dim = 0;
  double v;
  CHECK(mixer && mixer2 && x && y);
  /* NULLs. */
  CHECK_STATUS(mm_mixer_create(NULL, &mixer), MM_ERR_NULL);
  CHECK_MSG("config is NULL");
  CHECK_STATUS(mm_module_load(NULL, &mod), MM_ERR_NULL);
  CHECK_STATUS(mm_forward(NULL, NULL, x, &out), MM_ERR_NULL);
  CHECK_STATUS(mm_hook_install(NULL, NULL, NULL, 0, &hook), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_item(NULL, &v), MM_ERR_NULL);
  CHECK_STATUS(mm_backward(NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_module_borrow(NULL, &mod), MM_ERR_NULL);
  CHECK_OK(mm_tensor_destroy(NULL));
  CHECK_OK(mm_mixer_destroy(NULL));
  CHECK_OK(mm_module_destroy(NULL));
  CHECK_OK(mm_hook_remove(NULL));
  /* Config. */
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.size = 4;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("config->size");
  CHECK_STATUS(mm_mixer_config_init(&cfg, 4), MM_ERR_ARG);
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.alpha = -1;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("alpha");
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.schedule = MM_SCHEDULE_COSINE; /* total_steps 0 */
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_STATUS(mm_mixer_set_alpha(mixer, NAN), MM_ERR_ARG);
  /* Files. */
  CHECK_STATUS(mm_module_load("/nonexistent/model.pt", &mod), MM_ERR_IO);
  CHECK_MSG("/nonexistent/model.pt");
  CHECK_STATUS(mm_module_load(model_path("garbage"), &mod), MM_ERR_TORCH);
  /* Tensors. */
  CHECK_STATUS(mm_tensor_from_host(&f, (mm_dtype)42, shape1, 1, &bad), MM_ERR_ARG);
  CHECK_STATUS(mm_tensor_from_host(&f, MM_FLOAT32, shape_bad, 2, &bad), MM_ERR_ARG);
  CHECK_STATUS(mm_tensor_from_host(NULL, MM_FLOAT32, shape1, 1, &bad), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_to_host(x, small, sizeof small), MM_ERR_ARG);
  CHECK_MSG("bytes");
  CHECK_STATUS(mm_tensor_item(x, &v), MM_ERR_ARG);
  CHECK_STATUS(mm_tensor_size(x, 2, &dim), MM_ERR_ARG);
  /* Install: unknown names (named in the message), tuples, duplicates. */
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_STATUS(mm_hook_install(mixer, mod, unknown, 2, &hook), MM_ERR_NOT_FOUND);
  CHECK_MSG("layer9.1");
  CHECK(hook == NULL);
  CHECK_STATUS(mm_hook_install(mixer, mod, twice, 2, &hook), MM_ERR_ARG);
  CHECK_STATUS(mm_hook_install(mixer, mod, null_name, 1, &hook), MM_ERR_NULL);
  CHECK_STATUS(mm_hook_install(mixer, mod, NULL, 2, &hook), MM_ERR_NULL);
  CHECK_OK(mm_module_load(model_path("tuple"), &tup));
  CHECK_STATUS(mm_hook_install(mixer, tup, &pair, 1, &hook), MM_ERR_ARG);
  CHECK_MSG("'pair'");
  CHECK_MSG("Tensor");
  /* Out of order. */
  CHECK_STATUS(mm_batch_end(mixer), MM_ERR_STATE);
  CHECK_STATUS(mm_forward(mixer, mod, x, &out), MM_ERR_STATE);
  CHECK_MSG("no batch has begun");
  CHECK_STATUS(mm_mixed_cross_entropy(mixer, x, y, &loss), MM_ERR_STATE);
  CHECK_STATUS(mm_mix_targets(mixer, x, &out), MM_ERR_STATE);
  CHECK_STATUS(mm_batch_weights(mixer, &bad, NULL), MM_ERR_STATE);
  CHECK_STATUS(mm_batch_begin(mixer, 0, NULL), MM_ERR_ARG);
  CHECK_OK(mm_hook_install(mixer, mod, NULL, 0, &hook));
  CHECK_STATUS(mm_hook_install(mixer, mod, NULL, 0, &hook2), MM_ERR_STATE); /* one per mixer */
  CHECK_STATUS(mm_hook_install(mixer2, mod, NULL, 0, &hook2), MM_ERR_STATE); /* types taken */
  CHECK_MSG("already");
  CHECK_STATUS(mm_hook_point_name(hook, 7, &unknown[0]), MM_ERR_ARG);
  CHECK_OK(mm_batch_begin(mixer, B, NULL));
  CHECK_STATUS(mm_batch_begin(mixer, B, NULL), MM_ERR_STATE);
  CHECK_OK(mm_module_load(model_path("empty"), &other));
  CHECK_STATUS(mm_hook_install(mixer2, other, NULL, 0, &hook2), MM_ERR_ARG); /* nothing to mix */
  CHECK_MSG("pass");
  mm_module_destroy(other);
  other = NULL;
  /* Wrong batch size, dtypes and shapes. */
  {
    float x3[3 * D] = {0};
    int64_t s3[2] = {3, D};
    CHECK_OK(mm_tensor_from_host(x3, MM_FLOAT32, s3, 2, &bad));
  }
  CHECK_STATUS(mm_forward(mixer, mod, bad, &out), MM_ERR_ARG);
  CHECK_MSG("6 samples");
  CHECK_OK(mm_forward(mixer, mod, x, &out));
  CHECK_STATUS(mm_mixed_cross_entropy(mixer, out, x, &loss), MM_ERR_ARG); /* float targets */
  mm_tensor_destroy(bad);
  bad = NULL;
  CHECK_OK(mm_tensor_from_host(labels32, MM_INT32, shape1, 1, &bad));
  CHECK_STATUS(mm_mixed_cross_entropy(mixer, out, bad, &loss), MM_ERR_ARG);
  CHECK_MSG("int64");
  mm_tensor_destroy(bad);
  bad = NULL;
  CHECK_OK(mm_tensor_from_host(bad_labels, MM_INT64, shape1, 1, &bad));
  CHECK_STATUS(mm_mixed_cross_entropy(mixer, out, bad, &loss), MM_ERR_ARG); /* class 3 of 3 */
  CHECK_MSG("class indices");
  CHECK_STATUS(mm_mixed_cross_entropy(mixer, y, y, &loss), MM_ERR_ARG);
  CHECK_STATUS(mm_mix_targets(mixer, y, &bad), MM_ERR_ARG); /* int64 targets */
  CHECK_STATUS(mm_backward(out), MM_ERR_ARG);               /* not a scalar */
  CHECK_STATUS(mm_mse_loss(out, x, &loss), MM_ERR_ARG);
  CHECK_STATUS(mm_sgd_step(mod, -1.0), MM_ERR_ARG);
  CHECK_STATUS(mm_module_run_method(mod, "no_such_method", x, &loss), MM_ERR_NOT_FOUND);
  CHECK_OK(mm_batch_end(mixer));
  /* The loss of a model in eval mode with no grad is still a tensor; backward of a constant
   * is an error. */
  CHECK_OK(mm_cross_entropy(out, y, &loss));
  mm_tensor_destroy(out);
  out = NULL;
  {
    float zero = 0;
    mm_tensor* c = NULL;
    CHECK_OK(mm_tensor_from_host(&zero, MM_FLOAT32, NULL, 0, &c));
    CHECK(mm_backward(c) == MM_ERR_ARG);
    mm_tensor_destroy(c);
  }
  /* A frozen-out-of-order sequence still leaves the library usable. */
  CHECK_OK(mm_hook_remove(hook));
  hook = NULL;
  CHECK_OK(mm_module_load(model_path("mlp"), &other));
done:
  mm_hook_remove(hook);
  mm_hook_remove(hook2);
  mm_module_destroy(mod);
  mm_module_destroy(tup);
  mm_module_destroy(other);
  mm_mixer_destroy(mixer);
  mm_mixer_destroy(mixer2);
  mm_tensor_destroy(x);
  mm_tensor_destroy(y);
  mm_tensor_destroy(out);
  mm_tensor_destroy(loss);
  mm_tensor_destroy(bad);
}

/* Handles may be destroyed in any order; the hook keeps what it needs. */
static void test_destroy_order(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(0.4, 1);
  mm_hook* hook = NULL;
  CHECK(mixer);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, NULL, 0, &hook));
  CHECK_OK(mm_module_destroy(mod));
  mod = NULL;
  CHECK_OK(mm_mixer_destroy(mixer));
  mixer = NULL;
  CHECK_OK(mm_hook_remove(hook));
  hook = NULL;
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
}

static void* fail_in_thread(void* message_out) {
  mm_tensor_item(NULL, NULL);
  strncpy((char*)message_out, mm_last_error(), 255);
  return NULL;
}

/* mm_last_error is per thread: another thread's failure does not change this thread's. */
static void test_last_error_is_thread_local(void) {
  char other[256] = {0};
  pthread_t thread;
  CHECK_STATUS(mm_batch_begin(NULL, 1, NULL), MM_ERR_NULL);
  CHECK_MSG("mm_batch_begin");
  CHECK(pthread_create(&thread, NULL, fail_in_thread, other) == 0);
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK(strstr(other, "mm_tensor_item") != NULL);
  CHECK_MSG("mm_batch_begin");
done:;
}

/* Nothing mixes in a plain forward (mixer NULL) while a batch is open, nor in evaluation mode;
 * in training mode the points mix in any forward while the batch is open (here a method). */
static void test_plain_forward_and_eval_mode_do_not_mix(void) {
  mm_module* mod = NULL;
  mm_mixer *mixer = make_mixer(1.0, 0), *input_only = make_mixer(1.0, 1);
  mm_hook* hook = NULL;
  mm_tensor *x = make_input(), *h = NULL;
  const char* name = "l1"; /* called by the method trunk */
  float plain[B * C], out[B * C], trunk_plain[B * 8], trunk[B * 8];
  int64_t chosen = -5, mixes = -1, inputs = -1;
  CHECK(mixer && input_only && x);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK(plain_forward(mod, x, plain));
  CHECK_OK(mm_module_run_method(mod, "trunk", x, &h));
  CHECK_OK(mm_tensor_to_host(h, trunk_plain, sizeof trunk_plain));
  mm_tensor_destroy(h);
  h = NULL;
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK_OK(mm_batch_begin(mixer, B, &chosen));
  CHECK(chosen == 0);
  CHECK(plain_forward(mod, x, out)); /* mixer NULL: plain, though l1 is chosen */
  CHECK(max_diff(out, plain, B * C) == 0.0);
  CHECK_OK(mm_module_train(mod, 0)); /* evaluation: nothing mixes, mixer given or not */
  CHECK_OK(mm_forward(mixer, mod, x, &h));
  CHECK_OK(mm_tensor_to_host(h, out, sizeof out));
  CHECK(max_diff(out, plain, B * C) == 0.0);
  mm_tensor_destroy(h);
  h = NULL;
  CHECK_OK(mm_module_run_method(mod, "trunk", x, &h));
  CHECK_OK(mm_tensor_to_host(h, trunk, sizeof trunk));
  CHECK(max_diff(trunk, trunk_plain, B * 8) == 0.0);
  mm_tensor_destroy(h);
  h = NULL;
  CHECK_OK(mm_hook_mix_count(hook, 0, &mixes));
  CHECK(mixes == 0);
  CHECK_OK(mm_module_train(mod, 1)); /* training: the point mixes in the method too */
  CHECK_OK(mm_module_run_method(mod, "trunk", x, &h));
  CHECK_OK(mm_tensor_to_host(h, trunk, sizeof trunk));
  CHECK(max_diff(trunk, trunk_plain, B * 8) > 1e-4);
  CHECK_OK(mm_hook_mix_count(hook, 0, &mixes));
  CHECK(mixes == 1);
  CHECK_OK(mm_batch_end(mixer));
  /* The input is not mixed in evaluation mode either. */
  CHECK_OK(mm_module_train(mod, 0));
  CHECK_OK(mm_batch_begin(input_only, B, &chosen));
  CHECK(chosen == MM_POINT_INPUT);
  mm_tensor_destroy(h);
  h = NULL;
  CHECK_OK(mm_forward(input_only, mod, x, &h));
  CHECK_OK(mm_tensor_to_host(h, out, sizeof out));
  CHECK_OK(mm_batch_end(input_only));
  CHECK_OK(mm_mixer_input_mixes(input_only, &inputs));
  CHECK(max_diff(out, plain, B * C) == 0.0 && inputs == 0);
done:
  mm_tensor_destroy(h);
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_mixer_destroy(input_only);
  mm_tensor_destroy(x);
}

/* "Did this batch mix?" is one answer, read by the losses: a batch whose chosen point did not
 * run in training mode trains on the plain loss and is counted; one that mixed does not. */
static void test_a_batch_that_did_not_mix_trains_plainly(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(1.0, 0);
  mm_hook* hook = NULL;
  mm_tensor *x = make_input(), *y = make_targets(), *out = NULL, *mixed_ce = NULL, *plain_ce = NULL;
  const char* name = "l1";
  double vm = -1, vp = -2;
  int mixed = -1;
  int64_t chosen = -5, unmixed = -1;
  CHECK(mixer && x && y);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK_STATUS(mm_batch_mixed(mixer, &mixed), MM_ERR_STATE); /* no batch */
  /* Evaluation mode: the chosen point does not mix, so the mixed loss is the plain one. */
  CHECK_OK(mm_module_train(mod, 0));
  CHECK_OK(mm_batch_begin(mixer, B, &chosen));
  CHECK(chosen == 0);
  CHECK_OK(mm_forward(mixer, mod, x, &out));
  CHECK_OK(mm_batch_mixed(mixer, &mixed));
  CHECK(mixed == 0);
  CHECK_OK(mm_mixed_cross_entropy(mixer, out, y, &mixed_ce));
  CHECK_OK(mm_cross_entropy(out, y, &plain_ce));
  CHECK_OK(mm_tensor_item(mixed_ce, &vm));
  CHECK_OK(mm_tensor_item(plain_ce, &vp));
  CHECK(fabs(vm - vp) < 1e-6);
  CHECK_OK(mm_batch_end(mixer));
  CHECK_OK(mm_mixer_unmixed_batches(mixer, &unmixed));
  CHECK(unmixed == 1);
  mm_tensor_destroy(out);
  mm_tensor_destroy(mixed_ce);
  mm_tensor_destroy(plain_ce);
  out = mixed_ce = plain_ce = NULL;
  /* Training mode: not mixed before the forward, mixed after it, and the loss is mixed. */
  CHECK_OK(mm_module_train(mod, 1));
  CHECK_OK(mm_batch_begin(mixer, B, &chosen));
  CHECK_OK(mm_batch_mixed(mixer, &mixed));
  CHECK(mixed == 0);
  CHECK_OK(mm_forward(mixer, mod, x, &out));
  CHECK_OK(mm_batch_mixed(mixer, &mixed));
  CHECK(mixed == 1);
  CHECK_OK(mm_mixed_cross_entropy(mixer, out, y, &mixed_ce));
  CHECK_OK(mm_cross_entropy(out, y, &plain_ce));
  CHECK_OK(mm_tensor_item(mixed_ce, &vm));
  CHECK_OK(mm_tensor_item(plain_ce, &vp));
  CHECK(fabs(vm - vp) > 1e-4);
  CHECK_OK(mm_batch_end(mixer));
  CHECK_OK(mm_mixer_unmixed_batches(mixer, &unmixed));
  CHECK(unmixed == 1);
  CHECK_STATUS(mm_batch_mixed(NULL, &mixed), MM_ERR_NULL);
  CHECK_STATUS(mm_mixer_unmixed_batches(mixer, NULL), MM_ERR_NULL);
done:
  mm_tensor_destroy(out);
  mm_tensor_destroy(mixed_ce);
  mm_tensor_destroy(plain_ce);
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
  mm_tensor_destroy(y);
}

/* Removal always succeeds: in a batch it ends the batch, also when the mixer handle is gone. */
static void test_remove_in_a_batch(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(1.0, 0);
  mm_hook* hook = NULL;
  mm_tensor* x = make_input();
  const char* name = "l2";
  float plain[B * C], out[B * C], lam[B];
  int64_t perm[B], chosen = 0;
  CHECK(mixer && x);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK(plain_forward(mod, x, plain));
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK_OK(mm_batch_begin(mixer, B, NULL));
  CHECK_OK(mm_hook_remove(hook));
  hook = NULL;
  CHECK_STATUS(mm_batch_end(mixer), MM_ERR_STATE); /* the removal ended it */
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK_OK(mm_batch_begin(mixer, B, NULL));
  CHECK_OK(mm_mixer_destroy(mixer)); /* mid-batch: nobody can end this batch now */
  mixer = NULL;
  CHECK_OK(mm_hook_remove(hook));
  hook = NULL;
  /* The module is restored: in a batch of a fresh mixer its forward is plain. */
  mixer = make_mixer(1.0, 0);
  CHECK(mixer);
  CHECK(batch_forward(mixer, mod, x, out, lam, perm, &chosen));
  CHECK(chosen == MM_POINT_NONE && max_diff(out, plain, B * C) == 0.0);
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
}

/* Status codes follow the kind of error, whatever the names say: a point named already_trained
 * whose forward returns a tuple is a bad argument, not a call out of order. */
static void test_status_follows_the_kind_of_error(void) {
  mm_module* mod = NULL;
  mm_mixer* mixer = make_mixer(0.4, 1);
  mm_hook* hook = NULL;
  const char* already = "already_trained";
  const char* missing = "already_gone";
  CHECK(mixer);
  CHECK_OK(mm_module_load(model_path("tuple"), &mod));
  CHECK_STATUS(mm_hook_install(mixer, mod, &already, 1, &hook), MM_ERR_ARG);
  CHECK_MSG("'already_trained' cannot be a mixup point");
  CHECK_STATUS(mm_hook_install(mixer, mod, &missing, 1, &hook), MM_ERR_NOT_FOUND);
  CHECK(hook == NULL);
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
}

/* The config as a program built against an older header (a smaller struct) or a newer one (a
 * larger struct) passes it. */
struct old_config { /* the first fields of mm_mixer_config, as an older header might have them */
  size_t size;
  double alpha;
  int input_mixup;
};
struct new_config { /* mm_mixer_config and one field this library does not know */
  mm_mixer_config known;
  double future_field;
};

static void test_config_from_older_and_newer_headers(void) {
  union {
    struct old_config cfg;
    unsigned char bytes[sizeof(mm_mixer_config) + 16];
  } old;
  struct new_config newer;
  mm_mixer* mixer = NULL;
  double alpha = 0;
  size_t i;
  int64_t chosen = 0, batches = 0;
  /* init writes only the caller's bytes */
  memset(old.bytes, 0xab, sizeof old.bytes);
  CHECK_OK(mm_mixer_config_init((mm_mixer_config*)&old.cfg, sizeof old.cfg));
  CHECK(old.cfg.size == sizeof old.cfg && old.cfg.alpha == 0.4 && old.cfg.input_mixup == 1);
  for (i = sizeof old.cfg; i < sizeof old.bytes; ++i) CHECK(old.bytes[i] == 0xab);
  /* create reads only them: the rest takes the defaults (no schedule, no seed) */
  old.cfg.alpha = 0.7;
  old.cfg.input_mixup = 1;
  CHECK_OK(mm_mixer_create((const mm_mixer_config*)&old.cfg, &mixer));
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(alpha == 0.7);
  CHECK_OK(mm_batch_begin(mixer, B, &chosen));
  CHECK(chosen == MM_POINT_INPUT); /* input mixup on, no other point */
  CHECK_OK(mm_batch_end(mixer));
  CHECK_OK(mm_mixer_set_step(mixer, 3)); /* no schedule: alpha stays */
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(alpha == 0.7);
  CHECK_OK(mm_mixer_batches(mixer, &batches));
  CHECK(batches == 1);
  mm_mixer_destroy(mixer);
  mixer = NULL;
  /* a newer header's struct: accepted while its unknown bytes are zero, refused otherwise */
  memset(&newer, 0xab, sizeof newer);
  CHECK_OK(mm_mixer_config_init(&newer.known, sizeof newer));
  CHECK(newer.known.size == sizeof newer && newer.future_field == 0.0 && newer.known.alpha == 0.4);
  CHECK_OK(mm_mixer_create(&newer.known, &mixer));
  mm_mixer_destroy(mixer);
  mixer = NULL;
  newer.future_field = 1.0;
  CHECK_STATUS(mm_mixer_create(&newer.known, &mixer), MM_ERR_ARG);
  CHECK_MSG("newer header");
  CHECK(mixer == NULL);
done:
  mm_mixer_destroy(mixer);
}

static int file_equals(const char* path, const char* text) {
  char buf[256] = {0};
  FILE* f = fopen(path, "rb");
  size_t n;
  if (!f) return 0;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  return n == strlen(text) && memcmp(buf, text, n) == 0;
}

static int write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "wb");
  if (!f) return 0;
  fputs(text, f);
  return fclose(f) == 0;
}

/* Whether the directory holds a file whose name contains `part`. */
static int dir_has(const char* dir, const char* part) {
  DIR* d = opendir(dir);
  struct dirent* e;
  int found = 0;
  if (!d) return 0;
  while ((e = readdir(d)) != NULL) found |= strstr(e->d_name, part) != NULL;
  closedir(d);
  return found;
}

/* A save that fails leaves the file it would replace as it was, and no temporary behind. */
static void test_save_failure_keeps_the_old_file(void) {
  mm_module *mod = NULL, *bad = NULL, *back = NULL;
  char dir[4096], keep[4200], saved[4200];
  struct stat info;
  mm_status st;
  snprintf(dir, sizeof dir, "%s/save_test", g_dir);
  snprintf(keep, sizeof keep, "%s/keep.pt", dir);
  snprintf(saved, sizeof saved, "%s/mlp_copy.pt", dir);
  CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST);
  CHECK(write_file(keep, "precious"));
  CHECK_OK(mm_module_load(model_path("unsaveable"), &bad));
  st = mm_module_save(bad, keep);
  CHECK(file_equals(keep, "precious"));
  CHECK(st == MM_ERR_TORCH);
  CHECK_MSG("refuses to be saved");
  CHECK(!dir_has(dir, ".mm-save-"));
  /* a directory, or a directory that does not exist: MM_ERR_IO, nothing written */
  CHECK_STATUS(mm_module_save(bad, dir), MM_ERR_IO);
  CHECK_MSG("directory");
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_STATUS(mm_module_save(mod, "/nonexistent-dir/m.pt"), MM_ERR_IO);
  /* a save that works replaces the file, which keeps its permissions and then loads */
  CHECK(chmod(keep, 0640) == 0);
  CHECK_OK(mm_module_save(mod, keep));
  CHECK(stat(keep, &info) == 0 && (info.st_mode & 07777) == 0640);
  CHECK_OK(mm_module_load(keep, &back));
  CHECK_OK(mm_module_save(back, saved));
  CHECK(!dir_has(dir, ".mm-save-"));
done:
  mm_module_destroy(mod);
  mm_module_destroy(bad);
  mm_module_destroy(back);
}

/* A save whose writes fail (here past the process's file-size limit; a full disk fails the
 * same way) is MM_ERR_IO: the process goes on, the old file stays, no temporary file is left.
 * So is an empty path. */
static void test_save_write_failure_is_io(void) {
  mm_module* mod = NULL;
  char dir[4096], keep[4200];
  struct rlimit old, small;
  void (*previous)(int) = SIG_DFL;
  int limited = 0;
  mm_status st;
  snprintf(dir, sizeof dir, "%s/save_limit_test", g_dir);
  snprintf(keep, sizeof keep, "%s/keep.pt", dir);
  CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST);
  CHECK(write_file(keep, "precious"));
  CHECK_OK(mm_module_load(model_path("resnet"), &mod));
  CHECK_STATUS(mm_module_save(mod, ""), MM_ERR_IO);
  CHECK_MSG("empty");
  CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
  small = old;
  small.rlim_cur = 4096; /* the module's archive is larger */
  previous = signal(SIGXFSZ, SIG_IGN); /* else the limit ends the process */
  CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
  limited = 1;
  st = mm_module_save(mod, keep);
  CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
  limited = 0;
  CHECK(st == MM_ERR_IO);
  CHECK_MSG("too large");
  CHECK(file_equals(keep, "precious"));
  CHECK(!dir_has(dir, ".mm-save-"));
  CHECK_OK(mm_module_save(mod, keep)); /* within the limit again */
done:
  if (limited) setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, previous);
  mm_module_destroy(mod);
}

/* TorchScript's own failures (the interpreter's, the compiler's) are MM_ERR_TORCH. */
static void test_torchscript_errors_are_torch(void) {
  mm_module *mlp = NULL, *resnet = NULL, *bad = NULL;
  mm_tensor *x5 = NULL, *x64 = NULL, *xi = NULL, *out = NULL;
  float f5[B * 5] = {0};
  double d[B * D] = {0};
  int64_t l[B * D] = {0}, s5[2] = {B, 5}, s4[2] = {B, D};
  CHECK_OK(mm_module_load(model_path("mlp"), &mlp));
  CHECK_OK(mm_module_load(model_path("resnet"), &resnet));
  CHECK_OK(mm_tensor_from_host(f5, MM_FLOAT32, s5, 2, &x5));
  CHECK_OK(mm_tensor_from_host(d, MM_FLOAT64, s4, 2, &x64));
  CHECK_OK(mm_tensor_from_host(l, MM_INT64, s4, 2, &xi));
  CHECK_STATUS(mm_forward(NULL, mlp, x5, &out), MM_ERR_TORCH); /* 5 features, not 4 */
  CHECK_MSG("TorchScript");
  CHECK_STATUS(mm_forward(NULL, mlp, x64, &out), MM_ERR_TORCH);
  CHECK_STATUS(mm_forward(NULL, mlp, xi, &out), MM_ERR_TORCH);
  CHECK_STATUS(mm_forward(NULL, resnet, x64, &out), MM_ERR_TORCH); /* 2-d input to a CNN */
  CHECK_STATUS(mm_module_run_method(mlp, "trunk", x5, &out), MM_ERR_TORCH);
  CHECK(out == NULL);
  CHECK_STATUS(mm_module_load(model_path("syntax_error"), &bad), MM_ERR_TORCH);
  CHECK_MSG("expected");
  CHECK_STATUS(mm_module_load(model_path("bad_type_name"), &bad), MM_ERR_TORCH);
  CHECK_MSG("___torch_mangle_9");
  CHECK(bad == NULL);
done:
  mm_tensor_destroy(x5);
  mm_tensor_destroy(x64);
  mm_tensor_destroy(xi);
  mm_tensor_destroy(out);
  mm_module_destroy(mlp);
  mm_module_destroy(resnet);
  mm_module_destroy(bad);
}

/* Files that are not modules: a directory, a missing file, garbage. */
static void test_loading_what_is_not_a_module(void) {
  mm_module* mod = NULL;
  CHECK_STATUS(mm_module_load(g_dir, &mod), MM_ERR_IO);
  CHECK_MSG("directory");
  CHECK_STATUS(mm_module_load("/dev/null", &mod), MM_ERR_IO);
  CHECK_STATUS(mm_module_load("/nonexistent/model.pt", &mod), MM_ERR_IO);
  CHECK_MSG("/nonexistent/model.pt");
  CHECK_STATUS(mm_module_load(model_path("garbage"), &mod), MM_ERR_TORCH);
  CHECK(mod == NULL);
done:
  mm_module_destroy(mod);
}

/* Bad schedules and shapes that overflow are bad arguments. */
static void test_bad_schedules_and_shapes(void) {
  mm_mixer_config cfg;
  mm_mixer* mixer = NULL;
  mm_tensor* t = NULL;
  float f = 0;
  int64_t huge[2] = {INT64_MAX, 2}, square[2] = {(int64_t)1 << 40, (int64_t)1 << 40},
          bytes[1] = {(int64_t)1 << 62};
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.schedule = MM_SCHEDULE_EXPONENTIAL;
  cfg.alpha_min = 0.0; /* would stay 0: never mix */
  cfg.alpha_max = 1.0;
  cfg.total_steps = 10;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("alpha_min");
  cfg.alpha_min = 0.1;
  CHECK_OK(mm_mixer_create(&cfg, &mixer));
  cfg.schedule = (mm_schedule_kind)9;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_STATUS(mm_tensor_from_host(&f, MM_FLOAT32, huge, 2, &t), MM_ERR_ARG);
  CHECK_STATUS(mm_tensor_from_host(&f, MM_FLOAT32, square, 2, &t), MM_ERR_ARG);
  CHECK_STATUS(mm_tensor_from_host(&f, MM_FLOAT32, bytes, 1, &t), MM_ERR_ARG); /* 2^64 bytes */
  CHECK(t == NULL);
done:
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(t);
}

/* A DLPack tensor of float32 [rows, cols] over `data` (not copied, not read until used), whose
 * deleter counts in g_deleted: the memory is let go once nothing holds it. */
static int g_deleted;
static void count_deleted(DLManagedTensor* self) {
  (void)self;
  ++g_deleted;
}
static DLManagedTensor borrowed_floats(float* data, int64_t* shape) {
  DLManagedTensor m;
  memset(&m, 0, sizeof m);
  m.dl_tensor.data = data;
  m.dl_tensor.device.device_type = kDLCPU;
  m.dl_tensor.ndim = 2;
  m.dl_tensor.dtype.code = kDLFloat;
  m.dl_tensor.dtype.bits = 32;
  m.dl_tensor.dtype.lanes = 1;
  m.dl_tensor.shape = shape;
  m.deleter = count_deleted;
  return m;
}

/* Memory running out is MM_ERR_NOMEM wherever it happens: a tensor from the host, a batch's
 * weights, a copy. Sizes far beyond this machine, refused by the allocator without being
 * touched (not run under valgrind, whose allocator would warn about the sizes). Skipped where
 * the kernel grants any allocation (it would then be touched). */
static void test_allocation_failure_is_nomem(void) {
  mm_mixer* mixer = make_mixer(0.4, 1);
  mm_tensor *t = NULL, *huge = NULL, *copy = NULL;
  float f = 0;
  int64_t shape[1] = {(int64_t)1 << 58}, view[2] = {(int64_t)1 << 38, 4}, chosen = 0, batches = 0;
  DLManagedTensor managed = borrowed_floats(&f, view); /* 2^40 floats over one */
  FILE* oc = fopen("/proc/sys/vm/overcommit_memory", "r");
  int mode = 0;
  if (oc) {
    if (fscanf(oc, "%d", &mode) != 1) mode = 0;
    fclose(oc);
  }
  if (mode == 1) {
    printf("    skipped: vm.overcommit_memory is 1\n");
    mm_mixer_destroy(mixer);
    return;
  }
  g_deleted = 0;
  CHECK_STATUS(mm_tensor_from_host(&f, MM_FLOAT32, shape, 1, &t), MM_ERR_NOMEM); /* 2^60 bytes */
  CHECK_MSG("allocate");
  CHECK(t == NULL);
  CHECK_STATUS(mm_batch_begin(mixer, (int64_t)1 << 40, &chosen), MM_ERR_NOMEM); /* 12 TiB */
  CHECK_MSG("allocate");
  CHECK_STATUS(mm_batch_begin(mixer, INT64_MAX, &chosen), MM_ERR_ARG); /* not even addressable */
  CHECK_MSG("batch_size");
  CHECK_OK(mm_mixer_batches(mixer, &batches));
  CHECK(batches == 0);
  CHECK_OK(mm_batch_begin(mixer, B, &chosen)); /* nothing was left half begun */
  CHECK_OK(mm_batch_end(mixer));
  CHECK_OK(mm_tensor_from_dlpack(&managed, &huge));
  CHECK_STATUS(mm_tensor_to_device(huge, "cpu", &copy), MM_ERR_NOMEM); /* a 4 TiB copy */
  CHECK(copy == NULL);
  CHECK_OK(mm_tensor_destroy(huge));
  huge = NULL;
  CHECK(g_deleted == 1);
done:
  mm_tensor_destroy(t);
  mm_tensor_destroy(copy);
  mm_tensor_destroy(huge);
  mm_mixer_destroy(mixer);
}

/* An output passed as NULL is refused before any work: nothing is allocated, exported, mixed
 * or installed. The inputs' memory (a DLPack tensor's) is let go as soon as they are destroyed,
 * so no call kept a reference to it. */
static void test_null_outputs_do_no_work(void) {
  static float data[B * C];
  int64_t shape[2] = {B, C}, chosen = -5, n = 0;
  DLManagedTensor managed = borrowed_floats(data, shape), other = borrowed_floats(data, shape);
  mm_mixer_config cfg;
  mm_mixer* mixer = make_mixer(1.0, 1); /* no hook yet: the input is the chosen point */
  mm_module* mod = NULL;
  mm_hook* hook = NULL;
  mm_tensor *t = NULL, *x = make_input(), *y = make_targets();
  const char* name = "l2";
  const char* text = NULL;
  size_t count = 0;
  int mixed = -1;
  g_deleted = 0;
  CHECK(mixer && x && y);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(mm_tensor_from_dlpack(&managed, &t));
  CHECK_STATUS(mm_tensor_to_dlpack(t, NULL), MM_ERR_NULL);
  CHECK_MSG("out is NULL");
  CHECK_STATUS(mm_tensor_to_device(t, "cpu", NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_item(t, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_ndim(t, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_size(t, 0, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_numel(t, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_dtype(t, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_mse_loss(t, t, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_cross_entropy(t, y, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_from_host(data, MM_FLOAT32, shape, 2, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_tensor_from_dlpack(&other, NULL), MM_ERR_NULL); /* still the caller's */
  CHECK_STATUS(mm_module_load(model_path("mlp"), NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_module_run_method(mod, "forward", x, NULL), MM_ERR_NULL);
  mm_mixer_config_init(&cfg, sizeof cfg);
  CHECK_STATUS(mm_mixer_create(&cfg, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_mixer_alpha(mixer, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_mixer_batches(mixer, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_mixer_input_mixes(mixer, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_mixer_repeated_calls(mixer, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_mixer_unmixed_batches(mixer, NULL), MM_ERR_NULL);
  /* In a batch that mixes the input: a forward with nowhere to put its output does not mix. */
  CHECK_OK(mm_batch_begin(mixer, B, &chosen));
  CHECK(chosen == MM_POINT_INPUT);
  CHECK_STATUS(mm_forward(mixer, mod, x, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_batch_mixed(mixer, NULL), MM_ERR_NULL);
  CHECK_OK(mm_batch_mixed(mixer, &mixed));
  CHECK(mixed == 0);
  CHECK_OK(mm_mixer_input_mixes(mixer, &n));
  CHECK(n == 0);
  CHECK_STATUS(mm_mixed_cross_entropy(mixer, t, y, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_mix_targets(mixer, t, NULL), MM_ERR_NULL);
  CHECK_OK(mm_batch_end(mixer));
  /* A hook with nowhere to go installs nothing: the same points install afterwards. */
  CHECK_STATUS(mm_hook_install(mixer, mod, &name, 1, NULL), MM_ERR_NULL);
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK_STATUS(mm_hook_point_count(hook, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_hook_point_name(hook, 0, NULL), MM_ERR_NULL);
  CHECK_STATUS(mm_hook_mix_count(hook, 7, NULL), MM_ERR_NULL); /* NULL before the bad index */
  CHECK_STATUS(mm_hook_selection(hook, NULL), MM_ERR_NULL);
  CHECK_OK(mm_hook_point_count(hook, &count));
  CHECK_OK(mm_hook_point_name(hook, 0, &text));
  CHECK(count == 1 && strcmp(text, "l2") == 0);
  CHECK_OK(mm_tensor_destroy(t));
  t = NULL;
  CHECK(g_deleted == 1);
done:
  mm_hook_remove(hook);
  mm_tensor_destroy(t);
  mm_tensor_destroy(x);
  mm_tensor_destroy(y);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
}

/* Handles used after their destroy, destroyed twice, or of another kind are refused. */
static void test_handles_after_destroy(void) {
  mm_mixer* mixer = make_mixer(0.4, 1);
  mm_module* mod = NULL;
  mm_hook* hook = NULL;
  mm_tensor* x = make_input();
  mm_tensor* out = NULL;
  double v = 0;
  int64_t n = 0;
  CHECK(mixer && x);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, NULL, 0, &hook));
  /* another kind in the place of a handle */
  CHECK_STATUS(mm_tensor_item((const mm_tensor*)mixer, &v), MM_ERR_ARG);
  CHECK_MSG("not an mm_tensor");
  CHECK_STATUS(mm_batch_begin((mm_mixer*)x, B, NULL), MM_ERR_ARG);
  /* after destroy */
  CHECK_OK(mm_tensor_destroy(x));
  CHECK_STATUS(mm_tensor_item(x, &v), MM_ERR_STATE);
  CHECK_MSG("destroyed");
  CHECK_STATUS(mm_forward(NULL, mod, x, &out), MM_ERR_STATE);
  CHECK_STATUS(mm_tensor_destroy(x), MM_ERR_STATE);
  x = NULL;
  CHECK_OK(mm_hook_remove(hook));
  CHECK_STATUS(mm_hook_point_count(hook, (size_t*)&n), MM_ERR_STATE);
  CHECK_STATUS(mm_hook_remove(hook), MM_ERR_STATE);
  hook = NULL;
  CHECK_OK(mm_module_destroy(mod));
  CHECK_STATUS(mm_module_train(mod, 1), MM_ERR_STATE);
  CHECK_STATUS(mm_module_destroy(mod), MM_ERR_STATE);
  mod = NULL;
  CHECK_OK(mm_mixer_destroy(mixer));
  CHECK_STATUS(mm_mixer_batches(mixer, &n), MM_ERR_STATE);
  CHECK_STATUS(mm_batch_begin(mixer, B, NULL), MM_ERR_STATE);
  CHECK_STATUS(mm_mixer_destroy(mixer), MM_ERR_STATE);
  mixer = NULL;
  CHECK(out == NULL);
done:
  mm_tensor_destroy(x);
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
}

/* With a schedule alpha moves only with mm_mixer_set_step, not as batches begin. */
static void test_alpha_moves_only_with_set_step(void) {
  mm_mixer_config cfg;
  mm_mixer* mixer = NULL;
  double alpha = -1;
  int i;
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.schedule = MM_SCHEDULE_LINEAR;
  cfg.alpha_min = 0.2;
  cfg.alpha_max = 1.0;
  cfg.total_steps = 4;
  CHECK_OK(mm_mixer_create(&cfg, &mixer));
  for (i = 0; i < 6; ++i) {
    CHECK_OK(mm_batch_begin(mixer, B, NULL));
    CHECK_OK(mm_batch_end(mixer));
  }
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(alpha == 0.2);
  CHECK_OK(mm_mixer_set_step(mixer, 2));
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(fabs(alpha - 0.6) < 1e-12);
  CHECK_OK(mm_mixer_set_alpha(mixer, 0.3)); /* until the next set_step */
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(alpha == 0.3);
  CHECK_OK(mm_mixer_set_step(mixer, 40)); /* clamped at the end */
  CHECK_OK(mm_mixer_alpha(mixer, &alpha));
  CHECK(alpha == 1.0);
  CHECK_STATUS(mm_mixer_set_step(mixer, -1), MM_ERR_ARG);
done:
  mm_mixer_destroy(mixer);
}

/* The paper's lambda modes and skip_prob: one weight per batch, as drawn; skipped batches draw
 * nothing, choose no point and are counted apart from unmixed ones; bad values are refused. */
static void test_lambda_modes_and_skip_prob(void) {
  mm_mixer_config cfg;
  mm_mixer* mixer = NULL;
  mm_tensor *lam_t = NULL, *perm_t = NULL;
  float lam[B];
  int64_t perm[B], chosen = 0, skipped = 0, count = 0, unmixed = -1;
  int i, b, below_half = 0;
  mm_mixer_config_init(&cfg, sizeof cfg);
  CHECK(cfg.lam_mode == MM_LAMBDA_SAMPLE && cfg.no_fold == 0 && cfg.skip_prob == 0.0);
  cfg.alpha = 2.0;
  cfg.has_seed = 1;
  cfg.seed = 7;
  cfg.lam_mode = MM_LAMBDA_BATCH;
  cfg.no_fold = 1;
  cfg.skip_prob = 0.5;
  CHECK_OK(mm_mixer_create(&cfg, &mixer));
  for (b = 0; b < 200; ++b) {
    CHECK_OK(mm_batch_begin(mixer, B, &chosen));
    CHECK_OK(mm_batch_weights(mixer, &lam_t, &perm_t));
    CHECK_OK(mm_tensor_to_host(lam_t, lam, sizeof lam));
    CHECK_OK(mm_tensor_to_host(perm_t, perm, sizeof perm));
    mm_tensor_destroy(lam_t);
    mm_tensor_destroy(perm_t);
    lam_t = perm_t = NULL;
    for (i = 1; i < B; ++i) CHECK(lam[i] == lam[0]);
    if (chosen == MM_POINT_NONE) {
      ++skipped;
      for (i = 0; i < B; ++i) CHECK(lam[i] == 1.0f && perm[i] == i);
    } else {
      CHECK(chosen == MM_POINT_INPUT);
      below_half += lam[0] < 0.5f;
    }
    CHECK_OK(mm_batch_end(mixer));
  }
  CHECK_OK(mm_mixer_skipped_batches(mixer, &count));
  CHECK(count == skipped && skipped > 60 && skipped < 140);
  /* no forward ran: every batch that chose the input is unmixed, no skipped one is */
  CHECK_OK(mm_mixer_unmixed_batches(mixer, &unmixed));
  CHECK(unmixed == 200 - skipped);
  CHECK(below_half > 0); /* not folded */
  CHECK_STATUS(mm_mixer_skipped_batches(mixer, NULL), MM_ERR_NULL);
  mm_mixer_destroy(mixer);
  mixer = NULL;
  cfg.lam_mode = (mm_lambda_mode)7;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("lam_mode");
  cfg.lam_mode = MM_LAMBDA_SAMPLE;
  cfg.skip_prob = 1.5;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("skip_prob");
  CHECK(mixer == NULL);
done:
  mm_tensor_destroy(lam_t);
  mm_tensor_destroy(perm_t);
  mm_mixer_destroy(mixer);
}

/* Hard PatchUp on the resnet's blocks: the targets weigh the unchanged fraction of the maps (the
 * same for every sample, in (0, 1) when a block mixed, lam all 0); the logits are no feature map,
 * so a point there makes the forward fail; bad settings are refused. */
static void test_patchup(void) {
  mm_mixer_config cfg;
  mm_mixer* mixer = NULL;
  mm_module* mod = NULL;
  mm_hook* hook = NULL;
  mm_tensor *x = NULL, *y = make_targets(), *out = NULL, *loss = NULL, *w_t = NULL, *lam_t = NULL;
  const char* names[] = {"layer1.1", "layer2.1"};
  const char* logits[] = {"fc"};
  float img[B * 8 * 8], w[B], lam[B];
  int64_t shape[4] = {B, 1, 8, 8}, chosen = 0;
  int i, step, mixed_at_blocks = 0;
  for (i = 0; i < B * 8 * 8; ++i) img[i] = (float)cos(0.37 * (double)i);
  CHECK(y);
  CHECK_OK(mm_tensor_from_host(img, MM_FLOAT32, shape, 4, &x));
  mm_mixer_config_init(&cfg, sizeof cfg);
  CHECK(cfg.method == MM_METHOD_MIXUP && cfg.patchup_block == 0 && cfg.patchup_gamma == 0.0);
  cfg.alpha = 2.0;
  cfg.input_mixup = 0;
  cfg.has_seed = 1;
  cfg.seed = 11;
  cfg.method = MM_METHOD_PATCHUP_HARD;
  cfg.patchup_block = 3;
  cfg.patchup_gamma = 0.5;
  CHECK_OK(mm_mixer_create(&cfg, &mixer));
  CHECK_OK(mm_module_load(model_path("resnet"), &mod));
  CHECK_OK(mm_hook_install(mixer, mod, names, 2, &hook));
  for (step = 0; step < 6; ++step) {
    CHECK_OK(mm_batch_begin(mixer, B, &chosen));
    CHECK_OK(mm_forward(mixer, mod, x, &out));
    CHECK_OK(mm_mixed_cross_entropy(mixer, out, y, &loss));
    CHECK_OK(mm_backward(loss));
    CHECK_OK(mm_batch_target_weights(mixer, &w_t));
    CHECK_OK(mm_batch_weights(mixer, &lam_t, NULL));
    CHECK_OK(mm_tensor_to_host(w_t, w, sizeof w));
    CHECK_OK(mm_tensor_to_host(lam_t, lam, sizeof lam));
    for (i = 0; i < B; ++i) CHECK(lam[i] == 0.0f && w[i] == w[0]);
    CHECK(w[0] > 0.0f && w[0] < 1.0f);
    mixed_at_blocks += chosen >= 0;
    CHECK_OK(mm_batch_end(mixer));
    mm_tensor_destroy(out);
    mm_tensor_destroy(loss);
    mm_tensor_destroy(w_t);
    mm_tensor_destroy(lam_t);
    out = loss = w_t = lam_t = NULL;
  }
  CHECK(mixed_at_blocks == 6);
  CHECK_STATUS(mm_batch_target_weights(mixer, &w_t), MM_ERR_STATE); /* no batch */
  CHECK_OK(mm_hook_remove(hook));
  hook = NULL;
  CHECK_OK(mm_hook_install(mixer, mod, logits, 1, &hook));
  CHECK_OK(mm_batch_begin(mixer, B, &chosen));
  CHECK(chosen == 0);
  CHECK_STATUS(mm_forward(mixer, mod, x, &out), MM_ERR_TORCH); /* raised inside TorchScript */
  CHECK_MSG("PatchUp");
  CHECK(out == NULL);
  CHECK_OK(mm_batch_end(mixer));
  mm_mixer_destroy(mixer);
  mixer = NULL;
  cfg.patchup_block = 4;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("patchup_block");
  cfg.patchup_block = 3;
  cfg.method = (mm_method)9;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("method");
done:
  mm_hook_remove(hook);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
  mm_tensor_destroy(x);
  mm_tensor_destroy(y);
  mm_tensor_destroy(out);
  mm_tensor_destroy(loss);
  mm_tensor_destroy(w_t);
  mm_tensor_destroy(lam_t);
}

/* Noisy Feature Mixup: a seed repeats the noise; the input mixes with it (not only lam and
 * perm), so the model's output differs from the one mixed without noise; bad levels refused. */
static mm_status noisy_forward(double add, double mult, mm_module* mod, const mm_tensor* x,
                               float* out_host, size_t bytes) {
  mm_mixer_config cfg;
  mm_mixer* mixer = NULL;
  mm_tensor* out = NULL;
  int64_t chosen = 0;
  mm_status st;
  mm_mixer_config_init(&cfg, sizeof cfg);
  cfg.alpha = 1.0;
  cfg.has_seed = 1;
  cfg.seed = 3;
  cfg.add_noise = add;
  cfg.mult_noise = mult;
  st = mm_mixer_create(&cfg, &mixer);
  if (st == MM_OK) st = mm_batch_begin(mixer, B, &chosen);
  if (st == MM_OK && chosen != MM_POINT_INPUT) st = MM_ERR_INTERNAL; /* no point installed */
  if (st == MM_OK) st = mm_forward(mixer, mod, x, &out);
  if (st == MM_OK) st = mm_tensor_to_host(out, out_host, bytes);
  mm_tensor_destroy(out);
  mm_mixer_destroy(mixer);
  return st;
}

static void test_noisy_feature_mixup(void) {
  mm_mixer_config cfg;
  mm_mixer* mixer = NULL;
  mm_module* mod = NULL;
  mm_tensor* x = make_input();
  float plain[B * C], noisy[B * C], again[B * C];
  CHECK(x);
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_OK(noisy_forward(0.0, 0.0, mod, x, plain, sizeof plain));
  CHECK_OK(noisy_forward(0.4, 0.2, mod, x, noisy, sizeof noisy));
  CHECK_OK(noisy_forward(0.4, 0.2, mod, x, again, sizeof again));
  CHECK(memcmp(noisy, again, sizeof noisy) == 0);
  CHECK(max_diff(noisy, plain, B * C) > 1e-4);
  mm_mixer_config_init(&cfg, sizeof cfg);
  CHECK(cfg.add_noise == 0.0 && cfg.mult_noise == 0.0);
  cfg.add_noise = -1.0;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("add_noise");
  cfg.add_noise = 0.4;
  cfg.method = MM_METHOD_PATCHUP_SOFT;
  CHECK_STATUS(mm_mixer_create(&cfg, &mixer), MM_ERR_ARG);
  CHECK_MSG("PatchUp");
  CHECK(mixer == NULL);
done:
  mm_module_destroy(mod);
  mm_tensor_destroy(x);
}

struct test_case {
  const char* name;
  void (*fn)(void);
};

/* Devices: "cpu" works everywhere; a bad string and NULL are refused; "cuda" either trains a
 * step on the GPU (where libtorch sees one) or is refused with a message saying why. */
static void test_devices(void) {
  mm_mixer* mixer = make_mixer(0.4, 1);
  mm_module* mod = NULL;
  mm_tensor *x = make_input(), *y = make_targets(), *xd = NULL, *yd = NULL, *logits = NULL,
            *loss = NULL;
  mm_hook* hook = NULL;
  const char* name = "l2";
  float back[B * D], orig[B * D];
  int64_t chosen = 0;
  double value = 0;
  int i;
  CHECK(mixer && x && y);
  CHECK_OK(mm_tensor_to_device(x, "cpu", &xd));
  CHECK_OK(mm_tensor_to_host(xd, back, sizeof back));
  CHECK_OK(mm_tensor_to_host(x, orig, sizeof orig));
  for (i = 0; i < B * D; ++i) CHECK(back[i] == orig[i]);
  mm_tensor_destroy(xd);
  xd = NULL;
  CHECK_STATUS(mm_tensor_to_device(x, "gpu0", &xd), MM_ERR_ARG);
  CHECK_MSG("mm_tensor_to_device");
  CHECK_STATUS(mm_tensor_to_device(x, NULL, &xd), MM_ERR_NULL);
  CHECK_STATUS(mm_batch_begin_on(mixer, B, "tpu", &chosen), MM_ERR_ARG);
  CHECK_STATUS(mm_batch_begin_on(NULL, B, "cpu", &chosen), MM_ERR_NULL);
  CHECK_OK(mm_batch_begin_on(mixer, B, "cpu", &chosen));
  CHECK_OK(mm_batch_end(mixer));
  CHECK_OK(mm_module_load(model_path("mlp"), &mod));
  CHECK_STATUS(mm_module_to_device(mod, "somewhere"), MM_ERR_ARG);
  CHECK_OK(mm_module_to_device(mod, "cpu"));
  if (mm_tensor_to_device(x, "cuda", &xd) != MM_OK) {
    CHECK(strstr(mm_last_error(), "no CUDA") != NULL); /* this machine has no GPU */
    CHECK_STATUS(mm_batch_begin_on(mixer, B, "cuda", &chosen), MM_ERR_ARG);
    CHECK_STATUS(mm_module_to_device(mod, "cuda"), MM_ERR_ARG);
    goto done;
  }
  /* One mixed training step on the GPU. */
  CHECK_OK(mm_tensor_to_device(y, "cuda", &yd));
  CHECK_OK(mm_module_to_device(mod, "cuda"));
  CHECK_OK(mm_hook_install(mixer, mod, &name, 1, &hook));
  CHECK_OK(mm_batch_begin_on(mixer, B, "cuda", &chosen));
  CHECK_OK(mm_forward(mixer, mod, xd, &logits));
  CHECK_OK(mm_mixed_cross_entropy(mixer, logits, yd, &loss));
  CHECK_OK(mm_module_zero_grad(mod));
  CHECK_OK(mm_backward(loss));
  CHECK_OK(mm_sgd_step(mod, 0.1));
  CHECK_OK(mm_batch_end(mixer));
  CHECK_OK(mm_tensor_item(loss, &value));
  CHECK(isfinite(value) && value > 0);
done:
  mm_hook_remove(hook);
  mm_tensor_destroy(loss);
  mm_tensor_destroy(logits);
  mm_tensor_destroy(yd);
  mm_tensor_destroy(xd);
  mm_tensor_destroy(y);
  mm_tensor_destroy(x);
  mm_module_destroy(mod);
  mm_mixer_destroy(mixer);
}

int main(int argc, char** argv) {
  static const struct test_case cases[] = {
      {"version", test_version},
      {"install_by_name_mixes_only_at_the_point", test_install_by_name_mixes_only_at_the_point},
      {"layers_before_the_point_are_unchanged", test_layers_before_the_point_are_unchanged},
      {"alpha_zero_is_the_plain_forward", test_alpha_zero_is_the_plain_forward},
      {"shared_type_only_the_named_instance_mixes", test_shared_type_only_the_named_instance_mixes},
      {"install_automatically", test_install_automatically},
      {"resnet", test_resnet},
      {"remove_restores", test_remove_restores},
      {"second_call_in_a_batch_does_not_mix", test_second_call_in_a_batch_does_not_mix},
      {"training_step", test_training_step},
      {"regression_targets_and_schedule", test_regression_targets_and_schedule},
      {"tensors_host_and_dlpack", test_tensors_host_and_dlpack},
      {"errors", test_errors},
      {"destroy_order", test_destroy_order},
      {"last_error_is_thread_local", test_last_error_is_thread_local},
      {"devices", test_devices},
      {"plain_forward_and_eval_mode_do_not_mix", test_plain_forward_and_eval_mode_do_not_mix},
      {"a_batch_that_did_not_mix_trains_plainly", test_a_batch_that_did_not_mix_trains_plainly},
      {"remove_in_a_batch", test_remove_in_a_batch},
      {"status_follows_the_kind_of_error", test_status_follows_the_kind_of_error},
      {"config_from_older_and_newer_headers", test_config_from_older_and_newer_headers},
      {"save_failure_keeps_the_old_file", test_save_failure_keeps_the_old_file},
      {"torchscript_errors_are_torch", test_torchscript_errors_are_torch},
      {"loading_what_is_not_a_module", test_loading_what_is_not_a_module},
      {"bad_schedules_and_shapes", test_bad_schedules_and_shapes},
      {"allocation_failure_is_nomem", test_allocation_failure_is_nomem},
      {"null_outputs_do_no_work", test_null_outputs_do_no_work},
      {"save_write_failure_is_io", test_save_write_failure_is_io},
      {"handles_after_destroy", test_handles_after_destroy},
      {"alpha_moves_only_with_set_step", test_alpha_moves_only_with_set_step},
      {"lambda_modes_and_skip_prob", test_lambda_modes_and_skip_prob},
      {"patchup", test_patchup},
      {"noisy_feature_mixup", test_noisy_feature_mixup},
  };
  int failures = 0, run = 0, a;
  size_t i;
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL_DIR [FILTER]\n", argv[0]);
    return 2;
  }
  g_dir = argv[1];
  for (a = 2; a < argc; ++a) { /* every name given must be a case */
    for (i = 0; i < sizeof cases / sizeof cases[0] && strcmp(cases[i].name, argv[a]) != 0; ++i) continue;
    if (i == sizeof cases / sizeof cases[0]) {
      fprintf(stderr, "no case named %s\n", argv[a]);
      return 2;
    }
  }
  for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    int named = argc <= 2;
    for (a = 2; a < argc; ++a) named |= strcmp(cases[i].name, argv[a]) == 0;
    if (!named) continue;
    g_case_failed = 0;
    cases[i].fn();
    printf("%s %s\n", g_case_failed ? "FAIL" : "ok  ", cases[i].name);
    failures += g_case_failed;
    ++run;
  }
  printf("%d of %d cases passed\n", run - failures, run);
  return failures;
}
