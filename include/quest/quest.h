// Everything of quest's LibTorch layer in one include.
#pragma once

#include "quest/attention.h"
#include "quest/kind.h"
#include "quest/nn/multihead_attention.h"
#include "quest/runtime.h"
