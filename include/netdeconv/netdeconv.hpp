// SPDX-License-Identifier: MIT
#pragma once
// netdeconv: network deconvolution (Ye et al., ICLR 2020) as header-only C++20 templates.
// Everything at once; each header can also be included on its own.

#include "block_statistics.hpp"
#include "blocks.hpp"
#include "channel_deconv_layer.hpp"
#include "checkpoint.hpp"
#include "config.hpp"
#include "conv_deconv_layer.hpp"
#include "covariance.hpp"
#include "eigen.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "fold.hpp"
#include "geometry.hpp"
#include "im2col.hpp"
#include "inverse_sqrt.hpp"
#include "isqrt_options.hpp"
#include "layer_state.hpp"
#include "linear_deconv_layer.hpp"
#include "matrix_rows.hpp"
#include "moments.hpp"
#include "statistics_step.hpp"
#include "tensor_view.hpp"
#include "whiten.hpp"
