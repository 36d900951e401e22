#include "quest/torch/runtime.h"

#include <dlfcn.h>
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <torch/torch.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <strings.h>
#include <mutex>
#include <thread>

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
    info.openmp = info.name.find("USE_OPENMP") != std::string::npos;
  } else if (dlsym(RTLD_DEFAULT, "bli_info_get_version_str")) {
    info.name = "BLIS";
  } else if (dlsym(RTLD_DEFAULT, "mkl_get_version")) {
    info.name = "MKL";
  } else if (info.library.find("/blas/libblas") != std::string::npos ||
             info.library.find("libblas.so") != std::string::npos) {
    info.name = "reference";
    info.reference = true;
  } else {
    info.name = "unknown";
  }
  using CoreFn = char* (*)();
  if (auto core = reinterpret_cast<CoreFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"))) {
    info.core = core();
    if (!std::getenv("OPENBLAS_CORETYPE"))  // the user's choice stands
      info.better_core = better_openblas_core(info.core, __builtin_cpu_supports("avx512f"),
                                              __builtin_cpu_supports("avx2"));
  }
  return info;
}

std::string better_openblas_core(const std::string& core, bool avx512, bool avx2) {
  auto is = [&](std::initializer_list<const char*> names) {
    for (const char* n : names)
      if (strcasecmp(core.c_str(), n) == 0) return true;
    return false;
  };
  if (core.empty()) return "";
  if (avx512 && !is({"SkylakeX", "Cooperlake", "SapphireRapids"})) return "SkylakeX";
  if (!avx512 && avx2 && !is({"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"}))
    return "Haswell";
  return "";
}

bool warn_if_slow_blas() {
  static std::once_flag once;
  static bool warned = false;
  std::call_once(once, [] {
    const BlasInfo info = detect_blas();
    if (info.reference) {
      std::fprintf(stderr,
                   "\n*** WARNING: LibTorch is using the reference BLAS (%s).\n"
                   "*** Matrix products run ~30x slower (about 6 GFLOP/s instead of ~180).\n"
                   "*** Install OpenBLAS: apt-get install libopenblas0-pthread\n\n",
                   info.library.c_str());
      warned = true;
    } else if (!info.better_core.empty()) {
      std::fprintf(stderr,
                   "\n*** WARNING: OpenBLAS chose its %s kernels, older than this CPU's "
                   "instructions (it did not recognise the CPU).\n"
                   "*** Matrix products may run several times slower (on an AVX-512 machine of "
                   "this project: sgemm 42 instead of 207 GFLOP/s).\n"
                   "*** Set OPENBLAS_CORETYPE=%s to use them (`quest bench` reports sgemm).\n\n",
                   info.core.c_str(), info.better_core.c_str());
      warned = true;
    }
  });
  return warned;
}

std::string openmp_openblas_dir(const BlasInfo& blas) {
  namespace fs = std::filesystem;
  if (!blas.openblas || blas.openmp || blas.library.empty()) return "";
  fs::path dir = fs::path(blas.library).parent_path();
  if (dir.filename() == "openblas-pthread") dir = dir.parent_path();
  const fs::path candidate = dir / "openblas-openmp";
  std::error_code ec;
  return fs::exists(candidate / "libopenblas.so.0", ec) && fs::exists(candidate / "libblas.so.3", ec)
             ? candidate.string()
             : "";
}

std::string two_thread_pools_warning(bool claim) {
  static std::atomic<bool> given{false};
  if (given.load(std::memory_order_relaxed) || at::get_num_threads() < 2) return "";
  static const BlasInfo blas = detect_blas();  // once: it inspects the loaded libraries
  if (!blas.openblas || blas.openmp) return "";
  if (const char* policy = std::getenv("OMP_WAIT_POLICY"); policy && *policy) return "";
  if (claim && given.exchange(true)) return "";
  const std::string dir = openmp_openblas_dir(blas);
  const std::string passive = "OMP_WAIT_POLICY=passive OPENBLAS_THREAD_TIMEOUT=4";
  const std::string fix =
      dir.empty() ? passive : "LD_LIBRARY_PATH=" + dir + " (OpenBLAS's OpenMP build: one pool), or with " + passive;
  return "quest: torch runs " + std::to_string(at::get_num_threads()) +
         " threads on libgomp's pool and OpenBLAS (its pthread build) keeps a second pool; on few "
         "cores the two steal each other's time (quest.MultiheadAttention training steps ran "
         "1.4-1.9x slower at 2 threads than at 1). Start the process with " + fix + ".";
}

bool warn_if_two_thread_pools() {
  const std::string message = two_thread_pools_warning(true);
  if (message.empty()) return false;
  TORCH_WARN(message);
  return true;
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

bool keep_freed_memory() {
#if defined(__GLIBC__)
  // M_MMAP_MAX = 0: every block from the heap (M_MMAP_THRESHOLD cannot exceed 32 MB, so raising
  // it would leave the large N x N buffers on mmap). The trim threshold: never give the top back.
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1;
#else
  return false;
#endif
}

long minor_page_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

double peak_rss_gib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0 / 1024.0;  // KiB -> GiB
}

std::string error_message(const std::exception& e) {
  const c10::Error* c10 = dynamic_cast<const c10::Error*>(&e);
  return c10 ? c10->what_without_backtrace() : e.what();
}

}  // namespace quest
