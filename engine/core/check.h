// FLUX_CHECK: for internal invariants only (programming errors), never for anything a user or a
// file supplies — those are absl::Status values. A failed check prints where and aborts.
#pragma once

#include <cstdlib>
#include <iostream>
#include <sstream>

namespace fluxserve::internal {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) {
    os_ << file << ":" << line << ": check failed: " << cond << ": ";
  }
  [[noreturn]] ~CheckFailure() {
    std::cerr << os_.str() << std::endl;
    std::abort();
  }
  template <class T>
  CheckFailure& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  std::ostringstream os_;
};

}  // namespace fluxserve::internal

#define FLUX_CHECK(cond) \
  if (cond) {            \
  } else                 \
    ::fluxserve::internal::CheckFailure(__FILE__, __LINE__, #cond)
