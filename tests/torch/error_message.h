// The message of the c10::Error a call throws, without the backtrace ("" if it throws none).
#pragma once

#include <c10/util/Exception.h>

#include <functional>
#include <string>

namespace quest::testing {

inline std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace quest::testing
