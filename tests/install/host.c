/* A C host built against an installed manifold_mixup (tests/python/test_install.py builds it
 * through the CMake package and through pkg-config): the header, dlpack.h and the library come
 * from the install, libtorch from the library's RUNPATH.
 * Usage: host P1..P6 T1..T6   prints the library's version and the mean squared error of the
 * 2x3 prediction P (a copy, mm_tensor_from_host) against the target T (borrowed through DLPack). */
#include <dlpack/dlpack.h>
#include <manifold_mixup.h>

#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                     \
  do {                                                                                  \
    mm_status status_ = (call);                                                         \
    if (status_ != MM_OK) {                                                             \
      fprintf(stderr, "%s: %s: %s\n", #call, mm_status_string(status_), mm_last_error()); \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

static int deleted = 0;
static void on_delete(DLManagedTensor* self) { (void)self; ++deleted; }

int main(int argc, char** argv) {
  float prediction[6], target[6];
  int64_t shape[2] = {2, 3};
  DLManagedTensor managed = {0};
  mm_tensor *p = NULL, *t = NULL, *loss = NULL;
  double value = 0;
  int i;
  if (argc != 13) {
    fprintf(stderr, "usage: %s P1..P6 T1..T6\n", argv[0]);
    return 2;
  }
  for (i = 0; i < 6; ++i) {
    prediction[i] = (float)atof(argv[1 + i]);
    target[i] = (float)atof(argv[7 + i]);
  }
  if (mm_version() != MM_VERSION_NUMBER) {
    fprintf(stderr, "header version %d, library %u\n", MM_VERSION_NUMBER, mm_version());
    return 1;
  }
  printf("version %s\n", mm_version_string());

  managed.dl_tensor.data = target;
  managed.dl_tensor.device.device_type = kDLCPU;
  managed.dl_tensor.ndim = 2;
  managed.dl_tensor.dtype.code = kDLFloat;
  managed.dl_tensor.dtype.bits = 32;
  managed.dl_tensor.dtype.lanes = 1;
  managed.dl_tensor.shape = shape;
  managed.deleter = on_delete;

  CHECK(mm_tensor_from_host(prediction, MM_FLOAT32, shape, 2, &p));
  CHECK(mm_tensor_from_dlpack(&managed, &t));
  CHECK(mm_mse_loss(p, t, &loss));
  CHECK(mm_tensor_item(loss, &value));
  CHECK(mm_tensor_destroy(loss));
  CHECK(mm_tensor_destroy(t));
  CHECK(mm_tensor_destroy(p));
  if (deleted != 1) {
    fprintf(stderr, "the DLPack deleter ran %d times, not once\n", deleted);
    return 1;
  }
  printf("mse %.9g\n", value);
  return 0;
}
