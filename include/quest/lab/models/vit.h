// A Vision Transformer for small images: patch embedding, class token, learned position
// embedding, pre-norm blocks (any attention kind of the family), MLP, classification head.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <vector>

#include "quest/lab/models/option_names.h"
#include "quest/torch/nn/dropout.h"
#include "quest/torch/nn/multihead_attention.h"

namespace quest::models {

// How images become tokens (VitOptions::stem).
enum class Stem { patch, conv, conv_bn };
inline constexpr OptionNames<Stem, 3> kStemNames{{{Stem::patch, "patch"}, {Stem::conv, "conv"}, {Stem::conv_bn, "conv_bn"}}};
inline std::string to_string(Stem s) { return name_of(kStemNames, s); }
inline Stem parse_stem(const std::string& s) { return parse_option(kStemNames, s, "stem"); }

struct VitOptions {
  TORCH_ARG(int64_t, image_size) = 28;
  TORCH_ARG(int64_t, channels) = 1;
  TORCH_ARG(int64_t, patch_size) = 4;
  // Stem::patch: one linear patch embedding (a patch_size-strided convolution), as in ViT.
  // Stem::conv: a convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see
  // better"): log2(patch_size) 3x3 stride-2 convolutions with GELU, same token grid; needs a
  // power-of-two patch_size. Far more sample-efficient on small datasets.
  // Stem::conv_bn: the stem as Xiao et al. build it: each 3x3 stride-2 conv followed by BatchNorm and
  // ReLU, then a 1x1 conv to dim (BatchNorm: train/eval modes matter, statistics are buffers).
  TORCH_ARG(Stem, stem) = Stem::patch;
  TORCH_ARG(int64_t, num_classes) = 10;
  TORCH_ARG(int64_t, dim) = 128;
  TORCH_ARG(int64_t, depth) = 6;
  TORCH_ARG(int64_t, heads) = 4;
  TORCH_ARG(double, mlp_ratio) = 2.0;
  TORCH_ARG(double, dropout) = 0.0;            // after the MLP and the attention projection
  TORCH_ARG(double, attention_dropout) = 0.0;  // on the attention weights
  TORCH_ARG(double, drop_path) = 0.0;          // stochastic depth, rising linearly to this
  TORCH_ARG(Kind, attention) = Kind::quest;
  TORCH_ARG(Backend, backend) = Backend::automatic;
};

// Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const VitOptions& options, double drop_path);
  torch::Tensor forward(torch::Tensor x);

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  nn::MultiheadAttention attn{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  nn::Dropout dropout{nullptr};

 private:
  double drop_path_ = 0.0;
};
TORCH_MODULE(Block);

class VitImpl : public torch::nn::Module {
 public:
  explicit VitImpl(const VitOptions& options);
  // images: (B, C, H, W) float -> logits (B, num_classes).
  torch::Tensor forward(const torch::Tensor& images);
  // Draws every random initial weight from `generator` (layers as LibTorch's defaults, class
  // token and position embedding ~ N(0, 0.02^2)): the weights depend on the generator alone.
  void initialize(at::Generator generator);

  // Per block, the attention diagnostics of the last forward (when recording is on).
  void set_record_diagnostics(bool on);
  std::vector<std::optional<HeadDiagnostics>> attention_diagnostics() const;

  VitOptions options;
  torch::nn::Sequential patch_embed{nullptr};  // the stem: (B, C, H, W) -> (B, dim, grid, grid)
  torch::Tensor cls_token, pos_embed;
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr};
  nn::Dropout embed_dropout{nullptr};
};
TORCH_MODULE(Vit);

}  // namespace quest::models
