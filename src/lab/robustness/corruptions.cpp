#include "quest/lab/robustness/corruptions.h"

#include <jpeglib.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <functional>

namespace quest::robustness {
namespace {

namespace F = torch::nn::functional;
using torch::Tensor;

Tensor gaussian_kernel(double sigma) {  // 1-D, radius ceil(3 sigma), sums to 1
  const int64_t radius = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(3 * sigma)));
  const Tensor t = torch::arange(-radius, radius + 1, torch::kFloat);
  const Tensor k = torch::exp(-t * t / (2 * sigma * sigma));
  return k / k.sum();
}

// Same-size 2-D convolution of every image with `kernel` (kh, kw), edges reflected (clamped to
// the image size for kernels wider than it).
Tensor filter(const Tensor& x, const Tensor& kernel) {
  const int64_t ph = kernel.size(0) / 2, pw = kernel.size(1) / 2;
  Tensor padded = x;
  if (ph < x.size(2) && pw < x.size(3))
    padded = F::pad(x, F::PadFuncOptions({pw, pw, ph, ph}).mode(torch::kReflect));
  else
    padded = F::pad(x, F::PadFuncOptions({pw, pw, ph, ph}).mode(torch::kReplicate));
  return F::conv2d(padded, kernel.view({1, 1, kernel.size(0), kernel.size(1)}));
}

Tensor gaussian_blur(const Tensor& x, double sigma) {
  const Tensor k = gaussian_kernel(sigma);
  return filter(filter(x, k.view({1, -1})), k.view({-1, 1}));
}

// Bilinear resampling at pixel offsets (B, H, W, 2) = (dx, dy); outside the image: edge pixels.
Tensor displace(const Tensor& x, const Tensor& offsets) {
  const int64_t h = x.size(2), w = x.size(3);
  const Tensor ys = torch::arange(h, torch::kFloat).view({1, h, 1}).expand({x.size(0), h, w});
  const Tensor xs = torch::arange(w, torch::kFloat).view({1, 1, w}).expand({x.size(0), h, w});
  // grid_sample with align_corners: -1 and 1 are the centres of the first and last pixels.
  const Tensor gx = (xs + offsets.select(3, 0)) * (2.0 / std::max<int64_t>(w - 1, 1)) - 1;
  const Tensor gy = (ys + offsets.select(3, 1)) * (2.0 / std::max<int64_t>(h - 1, 1)) - 1;
  return F::grid_sample(x, torch::stack({gx, gy}, 3),
                        F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kBorder).align_corners(true));
}

// Zoom by `z` >= 1 about the centre, cropped back to the same size (scipy-zoom-and-crop).
Tensor zoom(const Tensor& x, double z) {
  const int64_t h = x.size(2), w = x.size(3);
  const double cy = (h - 1) / 2.0, cx = (w - 1) / 2.0;
  const Tensor ys = torch::arange(h, torch::kFloat).view({h, 1}).expand({h, w});
  const Tensor xs = torch::arange(w, torch::kFloat).view({1, w}).expand({h, w});
  const Tensor off = torch::stack({(xs - cx) / z + cx - xs, (ys - cy) / z + cy - ys}, 2);
  return displace(x, off.unsqueeze(0).expand({x.size(0), h, w, 2}));
}

// Diamond-square plasma fractal on a mapsize x mapsize grid in [0, 1] (ImageNet-C's fog).
Tensor plasma_fractal(int64_t mapsize, double wibbledecay, torch::Generator& gen) {
  Tensor map = torch::zeros({mapsize, mapsize}, torch::kDouble);
  double wibble = 100;
  auto wibbled_mean = [&](const Tensor& sum) {
    return sum / 4 + wibble * (torch::rand(sum.sizes(), gen, torch::kDouble) * 2 * wibble - wibble);
  };
  for (int64_t step = mapsize; step >= 2; step /= 2, wibble /= wibbledecay) {
    const int64_t half = step / 2;
    auto grid = [&](int64_t r0, int64_t c0) {
      return map.slice(0, r0, mapsize, step).slice(1, c0, mapsize, step);
    };
    {  // squares: centre = mean of the four corners
      const Tensor corners = grid(0, 0);
      Tensor sum = corners + torch::roll(corners, {-1}, {0});
      sum = sum + torch::roll(sum, {-1}, {1});
      grid(half, half).copy_(wibbled_mean(sum));
    }
    {  // diamonds: edge midpoints from the neighbouring centres and corners
      const Tensor centres = grid(half, half), corners = grid(0, 0);
      grid(0, half).copy_(wibbled_mean(centres + torch::roll(centres, {1}, {0}) + corners +
                                       torch::roll(corners, {-1}, {1})));
      grid(half, 0).copy_(wibbled_mean(centres + torch::roll(centres, {1}, {1}) + corners +
                                       torch::roll(corners, {-1}, {0})));
    }
  }
  map = map - map.min();
  return (map / map.max()).to(torch::kFloat);
}

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
};

void jpeg_throw(j_common_ptr info) { std::longjmp(reinterpret_cast<JpegError*>(info->err)->jump, 1); }

// One grayscale image through libjpeg at `quality`, in memory.
void jpeg_round_trip(uint8_t* pixels, int height, int width, int quality) {
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_compress_struct out{};
  jpeg_decompress_struct in{};
  JpegError err{};
  out.err = jpeg_std_error(&err.mgr);
  in.err = &err.mgr;
  err.mgr.error_exit = jpeg_throw;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&out);
    jpeg_destroy_decompress(&in);
    std::free(buffer);
    TORCH_CHECK(false, "quest::robustness: libjpeg failed on a ", height, "x", width, " image");
  }
  jpeg_create_compress(&out);
  jpeg_mem_dest(&out, &buffer, &size);
  out.image_width = width;
  out.image_height = height;
  out.input_components = 1;
  out.in_color_space = JCS_GRAYSCALE;
  jpeg_set_defaults(&out);
  jpeg_set_quality(&out, quality, TRUE);
  jpeg_start_compress(&out, TRUE);
  while (out.next_scanline < out.image_height) {
    JSAMPROW row = pixels + out.next_scanline * width;
    jpeg_write_scanlines(&out, &row, 1);
  }
  jpeg_finish_compress(&out);
  jpeg_destroy_compress(&out);
  jpeg_create_decompress(&in);
  jpeg_mem_src(&in, buffer, size);
  jpeg_read_header(&in, TRUE);
  in.out_color_space = JCS_GRAYSCALE;
  jpeg_start_decompress(&in);
  while (in.output_scanline < in.output_height) {
    JSAMPROW row = pixels + in.output_scanline * width;
    jpeg_read_scanlines(&in, &row, 1);
  }
  jpeg_finish_decompress(&in);
  jpeg_destroy_decompress(&in);
  std::free(buffer);
}

struct Corruption {
  CorruptionSpec spec;
  std::function<Tensor(const Tensor&, int, torch::Generator&)> apply;  // severity index 0..4
};

const std::vector<Corruption>& corruptions() {
  static const std::vector<Corruption> all = [] {
    std::vector<Corruption> v;
    auto add = [&](std::string name, std::string family, std::string formula,
                   std::vector<std::string> sev, decltype(Corruption::apply) fn) {
      v.push_back({{std::move(name), std::move(family), std::move(formula), std::move(sev)}, std::move(fn)});
    };
    add("gaussian_noise", "noise", "x + c N(0, 1)", {"c=0.04", "0.06", "0.08", "0.09", "0.10"},
        [](const Tensor& x, int s, torch::Generator& g) {
          static const double c[] = {0.04, 0.06, 0.08, 0.09, 0.10};
          return x + c[s] * torch::randn(x.sizes(), g);
        });
    add("shot_noise", "noise", "Poisson(c x) / c", {"c=500", "250", "100", "75", "50"},
        [](const Tensor& x, int s, torch::Generator& g) {
          static const double c[] = {500, 250, 100, 75, 50};
          return torch::poisson(x * c[s], g) / c[s];
        });
    add("impulse_noise", "noise", "a share c of pixels set to 0 or 1 (half each)",
        {"c=0.01", "0.02", "0.03", "0.05", "0.07"}, [](const Tensor& x, int s, torch::Generator& g) {
          static const double c[] = {0.01, 0.02, 0.03, 0.05, 0.07};
          const Tensor u = torch::rand(x.sizes(), g), salt = torch::rand(x.sizes(), g) < 0.5;
          return torch::where(u < c[s], salt.to(x.dtype()), x);
        });
    add("speckle_noise", "noise", "x + x c N(0, 1)", {"c=0.06", "0.10", "0.12", "0.16", "0.20"},
        [](const Tensor& x, int s, torch::Generator& g) {
          static const double c[] = {0.06, 0.10, 0.12, 0.16, 0.20};
          return x + x * c[s] * torch::randn(x.sizes(), g);
        });
    add("gaussian_blur", "blur", "Gaussian filter of std c pixels", {"c=0.4", "0.6", "0.7", "0.8", "1.0"},
        [](const Tensor& x, int s, torch::Generator&) {
          static const double c[] = {0.4, 0.6, 0.7, 0.8, 1.0};
          return gaussian_blur(x, c[s]);
        });
    // CIFAR-10-C's (0.05,1,1) .. (0.4,1,2) are not ordered at 28x28: more blur smooths the
    // swap noise, and severity 1 moved images further than severity 3 (measured; so did growing
    // blur and swaps together). Here the blur is fixed and the swap passes grow.
    add("glass_blur", "blur",
        "Gaussian(sigma); `iterations` passes swapping each pixel with a random one within +-delta; Gaussian(sigma)",
        {"(sigma, delta, iterations)=(0.4,1,1)", "(0.4,1,2)", "(0.4,1,3)", "(0.4,1,4)", "(0.4,1,5)"},
        [](const Tensor& x, int s, torch::Generator& g) {
          static const double sigma[] = {0.4, 0.4, 0.4, 0.4, 0.4};
          static const int64_t delta_of[] = {1, 1, 1, 1, 1};
          static const int iterations[] = {1, 2, 3, 4, 5};
          const int64_t delta = delta_of[s], b = x.size(0), h = x.size(2), w = x.size(3);
          Tensor y = gaussian_blur(x, sigma[s]).contiguous();
          const int64_t swaps = iterations[s] * (h - 2 * delta) * (w - 2 * delta);
          const Tensor d = torch::randint(-delta, delta + 1, {b, swaps, 2}, g, torch::kLong);
          auto acc = y.accessor<float, 4>();
          auto da = d.accessor<int64_t, 3>();
          for (int64_t i = 0; i < b; ++i) {
            int64_t n = 0;
            for (int it = 0; it < iterations[s]; ++it)
              for (int64_t r = h - 1 - delta; r >= delta; --r)
                for (int64_t c = w - 1 - delta; c >= delta; --c, ++n)
                  std::swap(acc[i][0][r][c], acc[i][0][r + da[i][n][1]][c + da[i][n][0]]);
          }
          return gaussian_blur(y, sigma[s]);
        });
    add("defocus_blur", "blur",
        "mean over a disk of radius r (pixel centres within r), then Gaussian(alias)",
        {"(r, alias)=(0.3,0.4)", "(0.4,0.5)", "(0.5,0.6)", "(1,0.2)", "(1.5,0.1)"},
        [](const Tensor& x, int s, torch::Generator&) {
          static const double r[] = {0.3, 0.4, 0.5, 1.0, 1.5}, alias[] = {0.4, 0.5, 0.6, 0.2, 0.1};
          const int64_t R = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(r[s])));
          const Tensor t = torch::arange(-R, R + 1, torch::kFloat);
          Tensor disk = ((t.view({-1, 1}).pow(2) + t.view({1, -1}).pow(2)) <= r[s] * r[s]).to(torch::kFloat);
          disk = disk / disk.sum();
          return gaussian_blur(filter(x, disk), alias[s]);
        });
    add("motion_blur", "blur",
        "mean of x shifted by k pixels along a random angle in [-45, 45] deg, k = 0..radius, weights exp(-k^2 / 2 sigma^2)",
        {"(radius, sigma)=(10,1)", "(10,1.5)", "(10,2)", "(10,2.5)", "(12,3)"},
        [](const Tensor& x, int s, torch::Generator& g) {
          static const int radius[] = {10, 10, 10, 10, 12};
          static const double sigma[] = {1, 1.5, 2, 2.5, 3};
          const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
          const Tensor angle = (torch::rand({b}, g) * 90 - 45) * (M_PI / 180);
          Tensor out = torch::zeros_like(x);
          double total = 0;
          for (int k = 0; k <= radius[s]; ++k) {
            const double wk = std::exp(-k * k / (2 * sigma[s] * sigma[s]));
            const Tensor off = torch::stack({torch::cos(angle) * k, torch::sin(angle) * k}, 1)
                                   .view({b, 1, 1, 2}).expand({b, h, w, 2});
            out = out + wk * displace(x, off);
            total += wk;
          }
          return out / total;
        });
    add("zoom_blur", "blur", "mean of x and x zoomed about the centre by z = 1.00, 1.01, .., z_max",
        {"z_max=1.05", "1.10", "1.15", "1.20", "1.25"}, [](const Tensor& x, int s, torch::Generator&) {
          const int steps = 5 * (s + 1);
          Tensor out = x.clone();
          for (int i = 1; i <= steps; ++i) out = out + zoom(x, 1 + 0.01 * i);
          return out / (steps + 1);
        });
    add("contrast", "digital", "(x - mean(x)) c + mean(x), mean per image",
        {"c=0.75", "0.5", "0.4", "0.3", "0.15"}, [](const Tensor& x, int s, torch::Generator&) {
          static const double c[] = {0.75, 0.5, 0.4, 0.3, 0.15};
          const Tensor m = x.mean({1, 2, 3}, true);
          return (x - m) * c[s] + m;
        });
    add("brightness", "weather", "x + c (the HSV value channel of a gray image is x)",
        {"c=0.05", "0.1", "0.15", "0.2", "0.3"}, [](const Tensor& x, int s, torch::Generator&) {
          static const double c[] = {0.05, 0.1, 0.15, 0.2, 0.3};
          return x + c[s];
        });
    add("fog", "weather",
        "(x + a P) max(x) / (max(x) + a), P a plasma fractal in [0, 1] (32x32 map, decay d, cropped)",
        {"(a, d)=(0.2,3)", "(0.5,3)", "(0.75,2.5)", "(1,2)", "(1.5,1.75)"},
        [](const Tensor& x, int s, torch::Generator& g) {
          static const double a[] = {0.2, 0.5, 0.75, 1.0, 1.5}, d[] = {3, 3, 2.5, 2, 1.75};
          const int64_t h = x.size(2), w = x.size(3);
          int64_t mapsize = 2;
          while (mapsize < std::max(h, w)) mapsize *= 2;
          std::vector<Tensor> out;
          for (int64_t i = 0; i < x.size(0); ++i) {
            const Tensor xi = x[i];
            const Tensor p = plasma_fractal(mapsize, d[s], g).slice(0, 0, h).slice(1, 0, w);
            const Tensor mx = xi.max();
            out.push_back((xi + a[s] * p) * mx / (mx + a[s]));
          }
          return torch::stack(out);
        });
    // CIFAR-10-C's c = 0.95 .. 0.65 gives 27 .. 18 pixels at 28x28, where aliasing of the
    // non-integer ratios made the distance to the clean image non-monotonic (measured).
    add("pixelate", "digital", "box-downsample to round(c H) x round(c W), bilinear upsample back",
        {"c=0.9", "0.8", "0.7", "0.6", "0.5"}, [](const Tensor& x, int s, torch::Generator&) {
          static const double c[] = {0.9, 0.8, 0.7, 0.6, 0.5};
          const int64_t h = x.size(2), w = x.size(3);
          const Tensor small = F::adaptive_avg_pool2d(
              x, F::AdaptiveAvgPool2dFuncOptions({std::lround(h * c[s]), std::lround(w * c[s])}));
          return F::interpolate(small, F::InterpolateFuncOptions()
                                           .size(std::vector<int64_t>{h, w})
                                           .mode(torch::kBilinear)
                                           .align_corners(false));
        });
    add("jpeg_compression", "digital", "8-bit JPEG encode + decode with libjpeg at quality q",
        {"q=80", "65", "58", "50", "40"}, [](const Tensor& x, int s, torch::Generator&) {
          static const int q[] = {80, 65, 58, 50, 40};
          Tensor u8 = (x.clamp(0, 1) * 255).round().to(torch::kUInt8).contiguous();
          const int64_t h = x.size(2), w = x.size(3);
          for (int64_t i = 0; i < x.size(0); ++i)
            jpeg_round_trip(u8[i][0].data_ptr<uint8_t>(), static_cast<int>(h), static_cast<int>(w), q[s]);
          return u8.to(torch::kFloat) / 255.0;
        });
    add("elastic_transform", "digital",
        "bilinear resampling along a displacement field: U(-1, 1) per pixel and axis, Gaussian(sigma = 3), scaled so its largest component is a pixels",
        {"a=0.75", "1.25", "1.75", "2.25", "2.75"}, [](const Tensor& x, int s, torch::Generator& g) {
          static const double a[] = {0.75, 1.25, 1.75, 2.25, 2.75};
          const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
          Tensor field = gaussian_blur(torch::rand({2 * b, 1, h, w}, g) * 2 - 1, 3.0).view({b, 2, h, w});
          field = field / field.abs().amax({1, 2, 3}, true).clamp_min(1e-12) * a[s];
          return displace(x, field.permute({0, 2, 3, 1}));
        });
    return v;
  }();
  return all;
}

}  // namespace

const std::vector<CorruptionSpec>& corruption_table() {
  static const std::vector<CorruptionSpec> table = [] {
    std::vector<CorruptionSpec> t;
    for (const auto& c : corruptions()) t.push_back(c.spec);
    return t;
  }();
  return table;
}

std::vector<std::string> corruption_names() {
  std::vector<std::string> names;
  for (const auto& c : corruptions()) names.push_back(c.spec.name);
  return names;
}

torch::Tensor corrupt(const torch::Tensor& images, const std::string& name, int severity,
                      uint64_t seed) {
  TORCH_CHECK(images.defined() && images.dim() == 4 && images.size(1) == 1 && images.numel() > 0,
              "quest::robustness::corrupt: expected non-empty grayscale images (B, 1, H, W), got ",
              images.defined() ? images.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(images.scalar_type() == torch::kFloat, "quest::robustness::corrupt: expected float32 images, got ",
              images.scalar_type());
  TORCH_CHECK(severity >= 1 && severity <= 5, "quest::robustness::corrupt: severity must be 1..5, got ", severity);
  const auto& all = corruptions();
  const auto it = std::find_if(all.begin(), all.end(), [&](const Corruption& c) { return c.spec.name == name; });
  TORCH_CHECK(it != all.end(), "quest::robustness::corrupt: unknown corruption '", name, "'");
  TORCH_CHECK(images.min().item<float>() >= 0 && images.max().item<float>() <= 1,
              "quest::robustness::corrupt: images must lie in [0, 1]");
  // A generator per (seed, corruption, severity): results do not depend on the order of calls.
  const uint64_t index = static_cast<uint64_t>(it - all.begin());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ULL + index * 16 + severity);
  torch::NoGradGuard no_grad;
  return it->apply(images.contiguous(), severity - 1, gen).clamp(0, 1).contiguous();
}

}  // namespace quest::robustness
