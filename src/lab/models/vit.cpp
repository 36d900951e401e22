#include "quest/lab/models/vit.h"

#include "quest/torch/nn/init.h"
#include "quest/torch/nn/linear.h"

namespace quest::models {

BlockImpl::BlockImpl(const VitOptions& o, double drop_path) : drop_path_(drop_path) {
  const int64_t hidden = static_cast<int64_t>(o.dim() * o.mlp_ratio());
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  attn = register_module("attn", nn::MultiheadAttention(nn::MultiheadAttentionOptions(o.dim(), o.heads())
                                                            .kind(o.attention())
                                                            .dropout(o.attention_dropout())
                                                            .backend(o.backend())));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  fc1 = register_module("fc1", torch::nn::Linear(o.dim(), hidden));
  fc2 = register_module("fc2", torch::nn::Linear(hidden, o.dim()));
  dropout = register_module("dropout", nn::Dropout(o.dropout()));
}

torch::Tensor BlockImpl::forward(torch::Tensor x) {
  x = x + nn::drop_path(dropout(attn(norm1(x))), drop_path_, is_training());
  return x + nn::drop_path(dropout(nn::linear(fc2, torch::gelu(nn::linear(fc1, norm2(x))))), drop_path_, is_training());
}

VitImpl::VitImpl(const VitOptions& o) : options(o) {
  TORCH_CHECK(o.image_size() > 0 && o.patch_size() > 0 && o.image_size() % o.patch_size() == 0,
              "quest::models::Vit: image_size ", o.image_size(), " is not a multiple of patch_size ",
              o.patch_size());
  TORCH_CHECK(o.depth() >= 1 && o.num_classes() >= 2 && o.mlp_ratio() > 0,
              "quest::models::Vit: need depth >= 1, num_classes >= 2 and mlp_ratio > 0");
  TORCH_CHECK(o.drop_path() >= 0 && o.drop_path() < 1 && o.dropout() >= 0 && o.dropout() < 1,
              "quest::models::Vit: dropout and drop_path must be in [0, 1)");
  const int64_t grid = o.image_size() / o.patch_size(), tokens = grid * grid + 1;
  patch_embed = register_module("patch_embed", torch::nn::Sequential());
  if (o.stem() == Stem::patch) {
    patch_embed->push_back(torch::nn::Conv2d(
        torch::nn::Conv2dOptions(o.channels(), o.dim(), o.patch_size()).stride(o.patch_size())));
  } else {  // Stem::conv, Stem::conv_bn
    const bool batch_norm = o.stem() == Stem::conv_bn;
    int64_t steps = 0;
    while ((int64_t{1} << steps) < o.patch_size()) ++steps;
    TORCH_CHECK(steps >= 1 && (int64_t{1} << steps) == o.patch_size(),
                "quest::models::Vit: the conv stem needs a power-of-two patch_size >= 2, got ",
                o.patch_size());
    int64_t in = o.channels();
    for (int64_t i = 0; i < steps; ++i) {  // widths double up to dim; each conv halves H and W
      const int64_t out = std::max<int64_t>(o.dim() >> (steps - 1 - i), 1);
      const std::string n = std::to_string(i + 1);
      if (batch_norm) {  // conv (no bias: BN has one) -> BN -> ReLU, then a 1x1 conv, as Xiao et al.
        patch_embed->push_back("conv" + n, torch::nn::Conv2d(
            torch::nn::Conv2dOptions(in, out, 3).stride(2).padding(1).bias(false)));
        patch_embed->push_back("norm" + n, torch::nn::BatchNorm2d(out));
        patch_embed->push_back("relu" + n, torch::nn::ReLU());
      } else {
        patch_embed->push_back(torch::nn::Conv2d(
            torch::nn::Conv2dOptions(in, out, 3).stride(2).padding(1)));
        if (i + 1 < steps) patch_embed->push_back(torch::nn::Functional([](torch::Tensor x) { return torch::gelu(x); }));
      }
      in = out;
    }
    if (batch_norm) patch_embed->push_back("project", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, o.dim(), 1)));
  }
  cls_token = register_parameter("cls_token", torch::randn({1, 1, o.dim()}) * 0.02);
  pos_embed = register_parameter("pos_embed", torch::randn({1, tokens, o.dim()}) * 0.02);
  embed_dropout = register_module("embed_dropout", nn::Dropout(o.dropout()));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth(); ++i) {
    const double rate = o.depth() > 1 ? o.drop_path() * i / (o.depth() - 1) : o.drop_path();
    blocks->push_back(Block(o, rate));
  }
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.dim()})));
  head = register_module("head", torch::nn::Linear(o.dim(), o.num_classes()));
}

torch::Tensor VitImpl::forward(const torch::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == options.channels() &&
                  images.size(2) == options.image_size() && images.size(3) == options.image_size(),
              "quest::models::Vit: expected images of shape (B, ", options.channels(), ", ",
              options.image_size(), ", ", options.image_size(), "), got ", images.sizes());
  auto x = patch_embed->forward<torch::Tensor>(images).flatten(2).transpose(1, 2);  // (B, patches, dim)
  x = torch::cat({cls_token.expand({x.size(0), 1, -1}), x}, 1) + pos_embed;
  x = embed_dropout(x);
  for (const auto& block : *blocks) x = block->as<Block>()->forward(x);
  return head(norm(x.select(1, 0)));  // LayerNorm is per token: only the class token is read
}

void VitImpl::initialize(at::Generator generator) {
  nn::reset_parameters(*this, generator);
  torch::NoGradGuard no_grad;
  cls_token.normal_(0.0, 0.02, generator);
  pos_embed.normal_(0.0, 0.02, generator);
}

void VitImpl::set_record_diagnostics(bool on) {
  for (const auto& block : *blocks) block->as<Block>()->attn->set_record_diagnostics(on);
}

std::vector<std::optional<HeadDiagnostics>> VitImpl::attention_diagnostics() const {
  std::vector<std::optional<HeadDiagnostics>> out;
  for (const auto& block : *blocks) out.push_back(block->as<Block>()->attn->last_diagnostics());
  return out;
}

}  // namespace quest::models
