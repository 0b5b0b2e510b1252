// Element types a checkpoint or a computation can hold, with their safetensors names and sizes.
// The CPU path computes in f32; other dtypes are storage formats converted at load or per op.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fluxserve {

enum class DType : uint8_t { kF32, kF16, kBF16, kF8E4M3FN, kF8E5M2, kI8, kU8, kI32, kI64, kBool };

size_t dtype_size(DType t);
// Name as torch prints it ("float32", "bfloat16", ...).
const char* dtype_name(DType t);
// safetensors header name ("F32", "BF16", "F8_E4M3", ...).
const char* safetensors_dtype_name(DType t);
std::optional<DType> dtype_from_safetensors(std::string_view name);
bool dtype_is_float(DType t);

}  // namespace fluxserve
