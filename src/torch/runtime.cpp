#include "quest/torch/runtime.h"

#include <dlfcn.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <cstdio>
#include <filesystem>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "quest/core/fused.h"

namespace quest {

BlasInfo detect_blas() {
  BlasInfo info;
  if (void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_")) {
    Dl_info where{};
    if (dladdr(sgemm, &where) && where.dli_fname) info.library = where.dli_fname;
  }
  using ConfigFn = char* (*)();
  if (auto config = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    info.name = config();  // "OpenBLAS 0.3.21 ... USE_OPENMP ..."
    if (info.name.rfind("OpenBLAS", 0) != 0) info.name = "OpenBLAS " + info.name;
    info.openblas = true;
    if (auto core = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename")))
      info.core = core();
  } else if (at::hasMKL()) {
    // The wheels link MKL statically (its symbols hidden): sgemm_ resolves into libtorch_cpu.
    info.name = info.library.find("libtorch_cpu") != std::string::npos ? "MKL (linked into LibTorch)"
                                                                         : "MKL";
  } else if (dlsym(RTLD_DEFAULT, "bli_info_get_version_str")) {
    info.name = "BLIS";
  } else if (info.library.find("/blas/libblas") != std::string::npos ||
             info.library.find("libblas.so") != std::string::npos) {
    info.name = "reference";
    info.reference = true;
  } else {
    info.name = "unknown";
  }
  return info;
}

std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

bool warn_if_slow_blas() {
  static std::once_flag once;
  static bool warned = false;
  std::call_once(once, [] {
    const BlasInfo info = detect_blas();
    if (info.reference) {
      std::fprintf(stderr,
                   "\n*** WARNING: LibTorch is using the reference BLAS (%s).\n"
                   "*** Matrix products run ~30x slower. Use torch's pip wheel (MKL inside) or "
                   "a LibTorch built with an optimised BLAS.\n\n",
                   info.library.c_str());
      warned = true;
    }
  });
  return warned;
}

std::vector<std::string> openmp_runtimes() {
  std::vector<std::string> found;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string name = std::filesystem::path(path).filename().string();
    const bool openmp = name.rfind("libgomp", 0) == 0 || name.rfind("libiomp", 0) == 0 ||
                        name.rfind("libomp.", 0) == 0 || name.rfind("libomp-", 0) == 0;
    if (openmp && std::find(found.begin(), found.end(), path) == found.end()) found.push_back(path);
  }
  return found;
}

int set_blas_threads(int threads) {
  using GetFn = int (*)();
  using SetFn = void (*)(int);
  auto get = reinterpret_cast<GetFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!get || !set) return -1;
  const int previous = get();
  set(threads);
  return previous;
}

int configure_threads() {
  int threads = 0;
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && *env) threads = std::atoi(env);
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = 1;
  torch::set_num_threads(threads);
  return threads;
}

namespace {
std::atomic<bool> bf16_products{true};
}  // namespace
bool set_bf16_products(bool enabled) { return bf16_products.exchange(enabled); }
bool bf16_products_enabled() { return bf16_products.load(); }

std::string set_simd_target(const std::string& name) {
  std::string previous = fused::simd_target();
  fused::set_simd_target(name);
  return previous;
}

std::string error_message(const std::exception& e) {
  const c10::Error* c10 = dynamic_cast<const c10::Error*>(&e);
  return c10 ? c10->what_without_backtrace() : e.what();
}

}  // namespace quest
