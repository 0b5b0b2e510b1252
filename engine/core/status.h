// Status helpers: early-return macros over absl::Status / absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FLUX_CONCAT_INNER(a, b) a##b
#define FLUX_CONCAT(a, b) FLUX_CONCAT_INNER(a, b)

#define FLUX_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status flux_status_ = (expr);        \
    if (!flux_status_.ok()) return flux_status_; \
  } while (0)

#define FLUX_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(*tmp)

#define FLUX_ASSIGN_OR_RETURN(lhs, expr) \
  FLUX_ASSIGN_OR_RETURN_IMPL(FLUX_CONCAT(flux_statusor_, __LINE__), lhs, expr)
