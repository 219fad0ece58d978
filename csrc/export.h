// MM_CORE_API marks what libmanifold_mixup_core exports: the C++ API of the headers installed
// under include/manifold_mixup/ (the Mixer, schedules, the mix op, mixup points on TorchScript
// modules, the selection rules and the error types). The core is compiled with hidden
// visibility, so nothing else in it is visible to the programs and libraries that link it.
#pragma once

#if defined(_WIN32) && defined(MM_BUILDING_CORE)
#define MM_CORE_API __declspec(dllexport)
#elif defined(_WIN32)
#define MM_CORE_API __declspec(dllimport)
#elif defined(__GNUC__)
#define MM_CORE_API __attribute__((visibility("default")))
#else
#define MM_CORE_API
#endif
