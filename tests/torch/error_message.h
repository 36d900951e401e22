// The message of the exception a call throws, a c10::Error's without the backtrace ("" if it
// throws none).
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <functional>
#include <string>

namespace quest::testing {

inline std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace quest::testing
