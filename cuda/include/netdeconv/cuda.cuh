// SPDX-License-Identifier: MIT
#pragma once
// The CUDA backend (cuda/README section in the top-level README): every .cuh header.
#include "cuda/covariance.cuh"
#include "cuda/covariance_sm80.cuh"
#include "cuda/error.cuh"
#include "cuda/execution.cuh"
#include "cuda/fold.cuh"
#include "cuda/im2col.cuh"
#include "cuda/inverse_sqrt.cuh"
#include "cuda/moments.cuh"
#include "cuda/tensor_view.cuh"
#include "cuda/whiten.cuh"
