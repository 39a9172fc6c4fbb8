// SPDX-License-Identifier: MIT
#pragma once
// NETDECONV_HOST_DEVICE marks the vocabulary's small member functions (view indexing, block
// column maps) that device code calls too: __host__ __device__ under nvcc, nothing otherwise.

#if defined(__CUDACC__)
#define NETDECONV_HOST_DEVICE __host__ __device__
#else
#define NETDECONV_HOST_DEVICE
#endif
