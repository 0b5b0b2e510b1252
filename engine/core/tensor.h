// Tensor: a contiguous, row-major n-d array on a device, sharing ownership of its bytes.
// The bytes may be an owned allocation or a view into something else kept alive by `owner`
// (an mmapped checkpoint, a larger tensor). Views never copy; `to(dtype)` and `clone()` do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/dtype.h"

namespace fluxserve {

enum class DeviceType : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;
  static Device cpu() { return {}; }
  static Device cuda(int i = 0) { return {DeviceType::kCUDA, i}; }
  bool operator==(const Device&) const = default;
  std::string str() const;
};

using Shape = std::vector<int64_t>;
std::string shape_str(std::span<const int64_t> shape);
int64_t shape_numel(std::span<const int64_t> shape);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialized / zero-filled CPU tensors (64-byte aligned).
  static Tensor empty(Shape shape, DType dtype = DType::kF32);
  static Tensor zeros(Shape shape, DType dtype = DType::kF32);
  // A view of memory owned elsewhere; `owner` keeps it alive (may be null for static data).
  static Tensor view_of(const void* data, Shape shape, DType dtype, std::shared_ptr<const void> owner,
                        Device device = Device::cpu());
  static Tensor from_vector(const std::vector<float>& v, Shape shape);

  bool defined() const { return data_ != nullptr || !shape_.empty(); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension d; negative d counts from the end.
  int64_t size(int d) const { return shape_[d < 0 ? d + dim() : d]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  std::string shape_str() const { return fluxserve::shape_str(shape_); }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  template <class T>
  T* data() {
    return static_cast<T*>(data_);
  }
  template <class T>
  const T* data() const {
    return static_cast<const T*>(data_);
  }
  const std::shared_ptr<const void>& owner() const { return owner_; }

  // Same bytes, new shape (numel must match: a programming error otherwise).
  Tensor reshape(Shape shape) const;
  // Rows [start, start+len) of dimension 0, as a view.
  Tensor slice0(int64_t start, int64_t len) const;
  // A deep copy with its own storage.
  Tensor clone() const;
  // A converted deep copy (float <-> float and integer -> f32 supported on the CPU).
  absl::StatusOr<Tensor> to(DType dtype) const;
  // f32 view if already f32, else a converted copy.
  absl::StatusOr<Tensor> as_f32() const;

 private:
  std::shared_ptr<const void> owner_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::kF32;
  Device device_;
};

}  // namespace fluxserve
