#include "engine/core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/check.h"
#include "kernels/common/dtype_math.h"

namespace fluxserve {

std::string Device::str() const {
  return type == DeviceType::kCPU ? "cpu" : absl::StrCat("cuda:", index);
}

std::string shape_str(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t shape_numel(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Tensor::empty(Shape shape, DType dtype) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  if (bytes == 0) bytes = 64;
  void* p = std::aligned_alloc(64, bytes);
  FLUX_CHECK(p != nullptr) << "out of host memory allocating " << bytes << " bytes";
  t.data_ = p;
  t.owner_ = std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype) {
  Tensor t = empty(std::move(shape), dtype);
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::view_of(const void* data, Shape shape, DType dtype,
                       std::shared_ptr<const void> owner, Device device) {
  Tensor t;
  t.data_ = const_cast<void*>(data);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.owner_ = std::move(owner);
  t.device_ = device;
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& v, Shape shape) {
  Tensor t = empty(std::move(shape), DType::kF32);
  FLUX_CHECK(static_cast<size_t>(t.numel()) == v.size()) << "from_vector size mismatch";
  std::memcpy(t.data_, v.data(), v.size() * sizeof(float));
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  FLUX_CHECK(shape_numel(shape) == numel())
      << "reshape " << shape_str() << " -> " << fluxserve::shape_str(shape);
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice0(int64_t start, int64_t len) const {
  FLUX_CHECK(dim() >= 1 && start >= 0 && len >= 0 && start + len <= shape_[0])
      << "slice0(" << start << ", " << len << ") of " << shape_str();
  Tensor t = *this;
  const size_t row = numel() == 0 ? 0 : nbytes() / static_cast<size_t>(shape_[0]);
  t.data_ = static_cast<char*>(data_) + row * static_cast<size_t>(start);
  t.shape_[0] = len;
  return t;
}

Tensor Tensor::clone() const {
  FLUX_CHECK(device_.type == DeviceType::kCPU) << "clone of a " << device_.str() << " tensor";
  Tensor t = empty(shape_, dtype_);
  if (nbytes() > 0) std::memcpy(t.data_, data_, nbytes());
  return t;
}

namespace {

float load_as_f32(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF16: return dmath::f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16: return dmath::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kF8E4M3FN: return dmath::f8e4m3fn_to_f32(static_cast<const uint8_t*>(p)[i]);
    case DType::kF8E5M2: return dmath::f8e5m2_to_f32(static_cast<const uint8_t*>(p)[i]);
    case DType::kI8: return static_cast<float>(static_cast<const int8_t*>(p)[i]);
    case DType::kU8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    case DType::kBool: return static_cast<const uint8_t*>(p)[i] != 0 ? 1.f : 0.f;
    case DType::kI32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case DType::kI64: return static_cast<float>(static_cast<const int64_t*>(p)[i]);
  }
  return 0.f;
}

void store_from_f32(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::kF32: static_cast<float*>(p)[i] = v; break;
    case DType::kF16: static_cast<uint16_t*>(p)[i] = dmath::f32_to_f16(v); break;
    case DType::kBF16: static_cast<uint16_t*>(p)[i] = dmath::f32_to_bf16(v); break;
    case DType::kF8E4M3FN: static_cast<uint8_t*>(p)[i] = dmath::f32_to_f8e4m3fn(v); break;
    case DType::kF8E5M2: static_cast<uint8_t*>(p)[i] = dmath::f32_to_f8e5m2(v); break;
    default: break;
  }
}

}  // namespace

absl::StatusOr<Tensor> Tensor::to(DType dtype) const {
  if (device_.type != DeviceType::kCPU) {
    return absl::UnimplementedError(absl::StrCat("dtype conversion on ", device_.str()));
  }
  if (dtype == dtype_) return clone();
  if (!dtype_is_float(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot convert ", dtype_name(dtype_), " to ",
                                                   dtype_name(dtype), " (only to float types)"));
  }
  Tensor t = empty(shape_, dtype);
  const int64_t n = numel();
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) store_from_f32(t.data_, dtype, i, load_as_f32(data_, dtype_, i));
  return t;
}

absl::StatusOr<Tensor> Tensor::as_f32() const {
  if (dtype_ == DType::kF32) return *this;
  return to(DType::kF32);
}

}  // namespace fluxserve
