// SPDX-License-Identifier: MIT
#pragma once
// The CUDA backend: every .cuh header. Each adds the cuda_policy overloads of the CPU calls of the
// same name (docs/architecture.md, "CUDA").
#include "cuda/covariance.cuh"
#include "cuda/covariance_sm80.cuh"
#include "cuda/error.cuh"
#include "cuda/execution.cuh"
#include "cuda/fold.cuh"
#include "cuda/im2col.cuh"
#include "cuda/inverse_sqrt.cuh"
#include "cuda/inverse_sqrt_vjp.cuh"
#include "cuda/layer_state.cuh"
#include "cuda/moments.cuh"
#include "cuda/statistics_step.cuh"
#include "cuda/statistics_step_vjp.cuh"
#include "cuda/whiten.cuh"
