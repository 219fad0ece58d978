/* A C11 program that trains a TorchScript CNN on scikit-learn's digits with manifold mixup,
 * through libmanifold_mixup's C API only.
 *
 *   python3 export_model.py DIR          writes DIR/digits_cnn.pt and DIR/digits.bin
 *   c_host DIR/digits_cnn.pt DIR/digits.bin [epochs]
 *
 * Points are installed by name on the two residual blocks (one TorchScript type, two
 * instances) and the input; each batch one of the three mixes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "manifold_mixup.h"

enum { PIXELS = 64, CLASSES = 10, BATCH = 64, N_VAL = 297 };

/* Stops the program with the library's message when a call fails. */
#define TRY(call)                                                                   \
  do {                                                                              \
    mm_status s_ = (call);                                                          \
    if (s_ != MM_OK) {                                                              \
      fprintf(stderr, "%s failed: %s: %s\n", #call, mm_status_string(s_), mm_last_error()); \
      exit(1);                                                                      \
    }                                                                               \
  } while (0)

struct dataset {
  uint32_t n;
  float* x;   /* n x 1 x 8 x 8, scaled to [0, 1] */
  int64_t* y; /* n */
};

static struct dataset load_digits(const char* path) {
  struct dataset d = {0, NULL, NULL};
  unsigned char magic[4], *pixels, *labels;
  FILE* f = fopen(path, "rb");
  uint32_t i;
  if (!f || fread(magic, 1, 4, f) != 4 || memcmp(magic, "MMDG", 4) != 0 || fread(&d.n, 4, 1, f) != 1) {
    fprintf(stderr, "cannot read %s (write it with export_model.py)\n", path);
    exit(1);
  }
  pixels = malloc((size_t)d.n * PIXELS);
  labels = malloc(d.n);
  d.x = malloc(sizeof(float) * d.n * PIXELS);
  d.y = malloc(sizeof(int64_t) * d.n);
  if (!pixels || !labels || !d.x || !d.y || fread(pixels, PIXELS, d.n, f) != d.n || fread(labels, 1, d.n, f) != d.n) {
    fprintf(stderr, "%s is truncated\n", path);
    exit(1);
  }
  for (i = 0; i < d.n * PIXELS; ++i) d.x[i] = pixels[i] / 16.0f;
  for (i = 0; i < d.n; ++i) d.y[i] = labels[i];
  free(pixels);
  free(labels);
  fclose(f);
  return d;
}

/* Tensors for samples [first, first + count) of d. */
static void batch_tensors(const struct dataset* d, uint32_t first, int64_t count, mm_tensor** x, mm_tensor** y) {
  const int64_t xshape[4] = {count, 1, 8, 8}, yshape[1] = {count};
  TRY(mm_tensor_from_host(d->x + (size_t)first * PIXELS, MM_FLOAT32, xshape, 4, x));
  TRY(mm_tensor_from_host(d->y + first, MM_INT64, yshape, 1, y));
}

/* Plain loss and accuracy of the module on samples [first, first + count). */
static void evaluate(mm_module* module, const struct dataset* d, uint32_t first, int64_t count,
                     double* loss, double* accuracy) {
  mm_tensor *x, *y, *logits, *l;
  float* out = malloc(sizeof(float) * (size_t)count * CLASSES);
  int64_t i, correct = 0;
  int c, best;
  TRY(mm_module_train(module, 0));
  batch_tensors(d, first, count, &x, &y);
  TRY(mm_forward(NULL, module, x, &logits));
  TRY(mm_cross_entropy(logits, y, &l));
  TRY(mm_tensor_item(l, loss));
  TRY(mm_tensor_to_host(logits, out, sizeof(float) * (size_t)count * CLASSES));
  for (i = 0; i < count; ++i) {
    for (best = 0, c = 1; c < CLASSES; ++c)
      if (out[i * CLASSES + c] > out[i * CLASSES + best]) best = c;
    correct += best == d->y[first + i];
  }
  *accuracy = (double)correct / (double)count;
  mm_tensor_destroy(x);
  mm_tensor_destroy(y);
  mm_tensor_destroy(logits);
  mm_tensor_destroy(l);
  free(out);
  TRY(mm_module_train(module, 1));
}

int main(int argc, char** argv) {
  const char* names[] = {"block1", "block2"};
  struct dataset data;
  mm_mixer_config cfg;
  mm_mixer* mixer;
  mm_module* module;
  mm_hook* hook;
  uint32_t n_train, first;
  int epochs = argc > 3 ? atoi(argv[3]) : 8, epoch;
  int64_t params = 0, count, inputs;
  size_t i, n_points;
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL.pt DIGITS.bin [epochs]\n", argv[0]);
    return 2;
  }
  if (mm_version() != MM_VERSION_NUMBER) fprintf(stderr, "warning: header and library versions differ\n");
  data = load_digits(argv[2]);
  n_train = data.n - N_VAL;

  TRY(mm_mixer_config_init(&cfg, sizeof cfg));
  cfg.alpha = 0.4;
  cfg.input_mixup = 1;
  cfg.has_seed = 1;
  cfg.seed = 2024;
  TRY(mm_mixer_create(&cfg, &mixer));
  TRY(mm_module_load(argv[1], &module));
  TRY(mm_module_parameter_count(module, NULL, &params));
  TRY(mm_hook_install(mixer, module, names, 2, &hook));
  printf("manifold_mixup %s, %lld parameters, points: input, block1, block2; %u train / %d val digits\n",
         mm_version_string(), (long long)params, n_train, N_VAL);

  for (epoch = 1; epoch <= epochs; ++epoch) {
    double sum = 0, v, val_loss, val_acc;
    int batches = 0;
    for (first = 0; first + BATCH <= n_train; first += BATCH) {
      mm_tensor *x, *y, *logits, *loss;
      batch_tensors(&data, first, BATCH, &x, &y);
      TRY(mm_batch_begin(mixer, BATCH, NULL));
      TRY(mm_forward(mixer, module, x, &logits));
      TRY(mm_mixed_cross_entropy(mixer, logits, y, &loss));
      TRY(mm_module_zero_grad(module));
      TRY(mm_backward(loss));
      TRY(mm_sgd_step(module, 0.1));
      TRY(mm_batch_end(mixer));
      TRY(mm_tensor_item(loss, &v));
      sum += v;
      ++batches;
      mm_tensor_destroy(x);
      mm_tensor_destroy(y);
      mm_tensor_destroy(logits);
      mm_tensor_destroy(loss);
    }
    evaluate(module, &data, n_train, N_VAL, &val_loss, &val_acc);
    printf("epoch %2d  train mixed loss %.4f  val loss %.4f  val accuracy %.3f\n", epoch, sum / batches,
           val_loss, val_acc);
  }

  TRY(mm_hook_point_count(hook, &n_points));
  printf("mixes per point:");
  for (i = 0; i < n_points; ++i) {
    const char* name;
    TRY(mm_hook_point_name(hook, i, &name));
    TRY(mm_hook_mix_count(hook, i, &count));
    printf(" %s %lld,", name, (long long)count);
  }
  TRY(mm_mixer_input_mixes(mixer, &inputs));
  TRY(mm_mixer_batches(mixer, &count));
  printf(" input %lld (of %lld batches)\n", (long long)inputs, (long long)count);

  TRY(mm_hook_remove(hook));
  TRY(mm_module_destroy(module));
  TRY(mm_mixer_destroy(mixer));
  free(data.x);
  free(data.y);
  return 0;
}
