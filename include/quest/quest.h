// Everything of quest's LibTorch layer in one include.
#pragma once

#include "quest/torch/attention.h"
#include "quest/core/kind.h"
#include "quest/torch/nn/linear.h"
#include "quest/torch/nn/multihead_attention.h"
#include "quest/torch/nn/rotary.h"
#include "quest/torch/runtime.h"
