// The CUDA backend's host-side entry points. Built only when the CUDA toolkit is present
// (FLUXSERVE_HAVE_CUDA); the rest of the engine must not include this header otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fluxserve::cuda {

// Number of usable CUDA devices (0 when there is no driver or no GPU), and a one-line
// description of device `i` for logs ("NVIDIA H100 80GB HBM3, sm_90, 79.2 GiB").
int device_count();
std::string device_description(int i);

// Elementwise storage-dtype -> f32 conversion on the device (dtype codes as engine DType).
// Returns a CUDA error string, empty on success.
std::string convert_to_f32(const void* src, int dtype_code, float* dst, int64_t n, void* stream);

}  // namespace fluxserve::cuda
