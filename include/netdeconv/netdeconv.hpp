// SPDX-License-Identifier: MIT
#pragma once
// netdeconv: network deconvolution (Ye et al., ICLR 2020) as header-only C++20 templates.
// Everything at once; each header can also be included on its own.

#include "blocks.hpp"
#include "channel_deconv_layer.hpp"
#include "checkpoint.hpp"
#include "conv_deconv_layer.hpp"
#include "covariance.hpp"
#include "error.hpp"
#include "execution.hpp"
#include "fold.hpp"
#include "im2col.hpp"
#include "inverse_sqrt.hpp"
#include "layer_state.hpp"
#include "linear_deconv_layer.hpp"
#include "moments.hpp"
#include "statistics_step.hpp"
#include "tensor_view.hpp"
#include "whiten.hpp"
