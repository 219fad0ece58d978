# The torch of ${Python3_EXECUTABLE}, and what is built against it. Included once by the top-level
# CMakeLists.txt, after Python3 is found and before any target. It sets, for the rest of the build:
#
#   MM_TORCH_VERSION, MM_TORCH_CUDA   torch.__version__ and torch.version.cuda (empty: no CUDA)
#   MM_TORCH_LIB_DIR                  the folder of libtorch (torch/lib in a pip install)
#   TORCH_LIBRARIES, TORCH_INCLUDE_DIRS, TORCH_LIBRARY, TORCH_CXX_FLAGS   as find_package(Torch)
#   CMAKE_CXX_STANDARD, CMAKE_CUDA_STANDARD   the standard torch's headers need
#   MM_CUDA_KERNEL_BUILT              fused: csrc/ops/cuda/mix_kernel.cu, compiled by nvcc
#                                     aten:  csrc/ops/cuda/mix_kernel_aten.cpp, ATen ops composed
#                                            in C++, for a CUDA torch without a CUDA toolkit
#                                     none:  torch has no CUDA
#   MM_WITH_CUDA                      the CUDA language is enabled (the fused kernels)
#   MM_CUDA_ARCHITECTURES             with the fused kernels: their architectures, also set as
#                                     CMAKE_CUDA_ARCHITECTURES for every target made after this
#
# A CPU torch, and a CUDA torch with a CUDA toolkit, come through torch's own CMake config
# (find_package(Torch)). A CUDA torch without a toolkit cannot: its config stops with "Your
# installed Caffe2 version uses CUDA but I cannot find the CUDA libraries". That build takes
# torch's include and library folders and its C++ ABI from torch itself, as
# torch.utils.cpp_extension builds a C++ extension against a CUDA torch.

set(MM_CUDA_KERNEL "auto" CACHE STRING
    "The CUDA kernels of a CUDA torch: auto (fused when nvcc is found, else aten), fused or aten")
set_property(CACHE MM_CUDA_KERNEL PROPERTY STRINGS auto fused aten)
if(NOT MM_CUDA_KERNEL MATCHES "^(auto|fused|aten)$")
  message(FATAL_ERROR "manifold_mixup: MM_CUDA_KERNEL is '${MM_CUDA_KERNEL}'; expected auto, fused or aten")
endif()

execute_process(
  COMMAND "${Python3_EXECUTABLE}" "${CMAKE_CURRENT_LIST_DIR}/torch_info.py"
  OUTPUT_VARIABLE _mm_info ERROR_VARIABLE _mm_info_err OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _mm_info_rc)
if(NOT _mm_info_rc EQUAL 0)
  message(FATAL_ERROR "manifold_mixup: ${Python3_EXECUTABLE} cannot import torch; install torch "
                      "first (this package compiles against the torch already installed)\n${_mm_info_err}")
endif()
string(REPLACE "\n" ";" _mm_info "${_mm_info}")
foreach(_line IN LISTS _mm_info)
  if(_line MATCHES "^([a-z_0-9]+)=(.*)$")
    set(_mm_torch_${CMAKE_MATCH_1} "${CMAKE_MATCH_2}")
  endif()
endforeach()
set(MM_TORCH_VERSION "${_mm_torch_version}")
set(MM_TORCH_CUDA "${_mm_torch_cuda}")
set(MM_TORCH_LIB_DIR "${_mm_torch_dir}/lib")

# A build folder belongs to one torch (and, for a CUDA torch, one nvcc or none): its cache holds
# their paths (Torch_DIR, the CUDA compiler or its absence, the libraries every RUNPATH names),
# which a new configure would keep. setup.py and the Makefile configure afresh when they change;
# a hand-made build folder is told to.
if(DEFINED CACHE{MM_TORCH_KEY} AND NOT MM_TORCH_KEY STREQUAL _mm_torch_key)
  message(FATAL_ERROR "manifold_mixup: ${CMAKE_BINARY_DIR} was configured for ${MM_TORCH_KEY}, "
                      "but now finds ${_mm_torch_key}. Configure it afresh: "
                      "cmake --fresh -S ${CMAKE_SOURCE_DIR} -B ${CMAKE_BINARY_DIR} (or remove the folder)")
endif()
set(MM_TORCH_KEY "${_mm_torch_key}" CACHE INTERNAL "The torch this build folder is configured for")
# Another torch installed in that Python reconfigures the build, which then stops above.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_mm_torch_dir}/version.py")

# Torch's headers decide the standard (C++20 from torch 2.13: 2.15's CUDA headers use
# std::bit_width), for nvcc as for the C++ compiler (nvcc's is set once CUDA is enabled, below).
set(CMAKE_CXX_STANDARD ${_mm_torch_cxx_standard})
set(CMAKE_CXX_STANDARD_REQUIRED ON)

# --- which CUDA kernels --------------------------------------------------------------------
set(MM_WITH_CUDA OFF)
set(MM_CUDA_KERNEL_BUILT none)
if(MM_TORCH_CUDA)
  set(MM_CUDA_KERNEL_BUILT aten)
  if(NOT MM_CUDA_KERNEL STREQUAL "aten")
    # nvcc named by CUDACXX or CMAKE_CUDA_COMPILER; else in the toolkit torch's own extension
    # builder would use (CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda); else as CMake
    # looks for it.
    if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND _mm_torch_cuda_home
       AND EXISTS "${_mm_torch_cuda_home}/bin/nvcc")
      set(CMAKE_CUDA_COMPILER "${_mm_torch_cuda_home}/bin/nvcc" CACHE FILEPATH "The CUDA compiler")
    endif()
    include(CheckLanguage)
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      set(MM_CUDA_KERNEL_BUILT fused)
    elseif(MM_CUDA_KERNEL STREQUAL "fused")
      message(FATAL_ERROR "manifold_mixup: MM_CUDA_KERNEL=fused, but no nvcc was found (torch has "
                          "CUDA ${MM_TORCH_CUDA}): set CUDA_HOME or CUDACXX, or put nvcc on PATH")
    else()
      message(STATUS "manifold_mixup: torch has CUDA ${MM_TORCH_CUDA} but no CUDA toolkit (nvcc) "
                     "was found: CUDA tensors mix with the ATen-composed kernel, not the fused one")
    endif()
  endif()
endif()

# --- the fused kernels' architectures ------------------------------------------------------
# As torch's extension builder picks them (TORCH_CUDA_ARCH_LIST, else the visible GPUs, else those
# torch was built for: see the script), less those this nvcc cannot build. Torch's own list
# silently loses what this nvcc cannot build; an architecture asked for by name is an error.
set(MM_CUDA_ARCHITECTURES "" CACHE STRING
    "CUDA architectures of the fused kernels as a CMake list (80-real;90); empty: chosen as torch does")
if(MM_CUDA_KERNEL_BUILT STREQUAL "fused")
  enable_language(CUDA)
  set(MM_WITH_CUDA ON)
  # CMake before 3.26 knows no nvcc flag for C++20, and then refuses any CUDA target of a C++20
  # project ("requires the language dialect CUDA20"): teach it the flag, as 3.26 does.
  if(NOT DEFINED CMAKE_CUDA${_mm_torch_cxx_standard}_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA${_mm_torch_cxx_standard}_STANDARD_COMPILE_OPTION "-std=c++${_mm_torch_cxx_standard}")
    set(CMAKE_CUDA${_mm_torch_cxx_standard}_EXTENSION_COMPILE_OPTION "-std=c++${_mm_torch_cxx_standard}")
  endif()
  set(_mm_archs "${MM_CUDA_ARCHITECTURES}")
  set(_mm_archs_from "MM_CUDA_ARCHITECTURES")
  if(NOT _mm_archs)
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" "${CMAKE_CURRENT_LIST_DIR}/torch_cuda_architectures.py"
      OUTPUT_VARIABLE _mm_archs ERROR_VARIABLE _mm_archs_err OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE _mm_archs_rc)
    if(NOT _mm_archs_rc EQUAL 0)
      message(FATAL_ERROR "manifold_mixup: cmake/torch_cuda_architectures.py failed:\n${_mm_archs_err}")
    endif()
    set(_mm_archs_from "")
    if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" MATCHES "^(native)?$")
      set(_mm_archs_from "TORCH_CUDA_ARCH_LIST")
    endif()
  endif()
  execute_process(COMMAND "${CMAKE_CUDA_COMPILER}" --list-gpu-arch
                  OUTPUT_VARIABLE _mm_nvcc_archs ERROR_QUIET RESULT_VARIABLE _mm_nvcc_rc)
  string(REGEX REPLACE "[ \t\r\n]+" " " _mm_nvcc_archs_said "${_mm_nvcc_archs}")
  string(STRIP "${_mm_nvcc_archs_said}" _mm_nvcc_archs_said)
  set(MM_CUDA_ARCHITECTURES "")
  foreach(_arch IN LISTS _mm_archs)
    string(REGEX MATCH "^[0-9]+[a-z]?" _num "${_arch}")
    if(_mm_nvcc_rc EQUAL 0 AND NOT _mm_nvcc_archs MATCHES "compute_${_num}([^0-9a-z]|$)")
      if(_mm_archs_from)
        message(FATAL_ERROR "manifold_mixup: ${_mm_archs_from} asks for CUDA architecture ${_arch}, "
                            "which this nvcc (${CMAKE_CUDA_COMPILER_VERSION}) cannot build; it builds: "
                            "${_mm_nvcc_archs_said}")
      endif()
      message(STATUS "manifold_mixup: skipping CUDA architecture ${_arch}: this nvcc "
                     "(${CMAKE_CUDA_COMPILER_VERSION}) cannot build it")
    else()
      list(APPEND MM_CUDA_ARCHITECTURES "${_arch}")
    endif()
  endforeach()
  if(NOT MM_CUDA_ARCHITECTURES)
    message(FATAL_ERROR "manifold_mixup: no CUDA architecture to build for (torch's: '${_mm_archs}'); "
                        "set TORCH_CUDA_ARCH_LIST (e.g. \"8.0;9.0+PTX\") or MM_CUDA_ARCHITECTURES")
  endif()
  # Torch's config turns its own TORCH_CUDA_ARCH_LIST into -gencode flags (with no list and no
  # GPU: a "Common" list that starts at compute_50, which CUDA 13 cannot build). Hand it ours
  # in its notation; the flags it makes are removed below, the target property is what counts.
  set(TORCH_CUDA_ARCH_LIST "")
  foreach(_arch IN LISTS MM_CUDA_ARCHITECTURES)
    if(_arch MATCHES "^([0-9]+)([0-9][a-z]?)")
      list(APPEND TORCH_CUDA_ARCH_LIST "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES TORCH_CUDA_ARCH_LIST)
  # Torch's FindCUDA looks for the toolkit beside nvcc; nvcc may be a wrapper elsewhere.
  if(NOT CUDA_TOOLKIT_ROOT_DIR AND CMAKE_CUDA_COMPILER_TOOLKIT_ROOT)
    set(CUDA_TOOLKIT_ROOT_DIR "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}" CACHE PATH "The CUDA toolkit")
  endif()
endif()

# --- torch's libraries ---------------------------------------------------------------------
if(MM_CUDA_KERNEL_BUILT STREQUAL "aten")
  # What torch.utils.cpp_extension compiles a C++ extension with: torch's two include folders,
  # its C++ ABI, and libc10, libtorch, libtorch_cpu (the Python module adds libtorch_python).
  # No CUDA library: the ATen-composed kernel calls ATen through the dispatcher.
  set(TORCH_INCLUDE_DIRS "${_mm_torch_dir}/include" "${_mm_torch_dir}/include/torch/csrc/api/include")
  set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=${_mm_torch_cxx11_abi}")
  set(_mm_libs "")
  foreach(_lib c10 torch torch_cpu)
    find_library(MM_TORCH_${_lib}_LIBRARY ${_lib} PATHS "${MM_TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
    list(APPEND _mm_libs "${MM_TORCH_${_lib}_LIBRARY}")
  endforeach()
  set(TORCH_LIBRARY "${MM_TORCH_torch_LIBRARY}")
  add_library(mm_torch INTERFACE IMPORTED)
  set_target_properties(mm_torch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}"
    INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=${_mm_torch_cxx11_abi}"
    INTERFACE_LINK_LIBRARIES "${_mm_libs}")
  set(TORCH_LIBRARIES mm_torch)
else()
  list(APPEND CMAKE_PREFIX_PATH "${_mm_torch_cmake_prefix}")
  # enable_language(CUDA) set a default, which torch's config would warn about and ignore.
  unset(CMAKE_CUDA_ARCHITECTURES)
  unset(CMAKE_CUDA_ARCHITECTURES CACHE)
  find_package(Torch REQUIRED)
  # Torch's -gencode flags would add to (and, for an architecture this nvcc lacks, break) the
  # architectures chosen above; torch's config also sets CMAKE_CUDA_ARCHITECTURES OFF.
  if(MM_WITH_CUDA)
    # TORCH_LIBRARIES names libnvrtc, for torch's own run-time compilation: nothing here calls
    # it, and a toolkit without it (CUDA_nvrtc_LIBRARY-NOTFOUND) would stop the build.
    list(FILTER TORCH_LIBRARIES EXCLUDE REGEX "nvrtc")
    foreach(_var CMAKE_CUDA_FLAGS CUDA_NVCC_FLAGS)
      string(REGEX REPLACE "-gencode[= ]arch=[^ ;]+" "" ${_var} "${${_var}}")
    endforeach()
    set(CMAKE_CUDA_ARCHITECTURES "${MM_CUDA_ARCHITECTURES}")
  endif()
  # torch's MKL target names ${MKL_ROOT}/lib/intel64 (and _win, win-x64) as link directories
  # whether or not they exist (pytorch/pytorch#73008); with MKL_ROOT unset they become /lib/intel64
  # and so on, which CMake then writes into every binary's RUNPATH. Keep only folders that exist.
  if(TARGET caffe2::mkl)
    get_target_property(_mm_mkl_dirs caffe2::mkl INTERFACE_LINK_DIRECTORIES)
    if(_mm_mkl_dirs)
      set(_mm_kept "")
      foreach(_dir IN LISTS _mm_mkl_dirs)
        if(IS_DIRECTORY "${_dir}")
          list(APPEND _mm_kept "${_dir}")
        endif()
      endforeach()
      set_property(TARGET caffe2::mkl PROPERTY INTERFACE_LINK_DIRECTORIES "${_mm_kept}")
    endif()
  endif()
endif()

if(MM_WITH_CUDA)
  set(CMAKE_CUDA_STANDARD ${_mm_torch_cxx_standard})
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
endif()

# In the cache too, for scripts that read it (scripts/gpu-check.sh reads MM_WITH_CUDA).
set(MM_WITH_CUDA ${MM_WITH_CUDA} CACHE INTERNAL "The fused CUDA kernels are built")
set(MM_CUDA_KERNEL_BUILT ${MM_CUDA_KERNEL_BUILT} CACHE INTERNAL "The CUDA kernels built: fused, aten or none")

set(_mm_kernel_words_fused "fused (nvcc)")
set(_mm_kernel_words_aten "ATen-composed (no CUDA toolkit found; slower than the fused kernel)")
set(_mm_kernel_words_none "none (torch has no CUDA)")
message(STATUS "manifold_mixup: torch ${MM_TORCH_VERSION} in ${MM_TORCH_LIB_DIR}, C++${CMAKE_CXX_STANDARD}, "
               "CUDA kernel: ${_mm_kernel_words_${MM_CUDA_KERNEL_BUILT}}")
if(MM_WITH_CUDA)
  message(STATUS "manifold_mixup: CUDA architectures ${MM_CUDA_ARCHITECTURES}")
endif()
