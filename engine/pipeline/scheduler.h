// FlowMatchEulerDiscreteScheduler (diffusers schedulers/scheduling_flow_match_euler_discrete.py)
// as FluxPipeline drives it: sigmas = linspace(1, 1/N, N), resolution-dependent shift `mu` from
// the image sequence length, float32 tables, and the Euler step x += (sigma[i+1] - sigma[i]) v.
// The arithmetic follows numpy/torch dtype rules step by step so the tables match bit for bit.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "nlohmann/json.hpp"

namespace fluxserve {

struct FlowMatchEulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  bool invert_sigmas = false;
  double shift_terminal = 0.0;       // 0 / null = off
  bool linear_time_shift = false;    // time_shift_type "linear" (default "exponential")

  // Unknown fields are ignored; options this implementation does not support
  // (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas, stochastic_sampling) are errors.
  static absl::StatusOr<FlowMatchEulerConfig> from_json(const nlohmann::json& j,
                                                        const std::string& what);
};

// FluxPipeline's calculate_shift: mu linear in the image sequence length (not clamped).
double calculate_shift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len,
                       double base_shift, double max_shift);

class FlowMatchEulerDiscreteScheduler {
 public:
  explicit FlowMatchEulerDiscreteScheduler(const FlowMatchEulerConfig& config) : config_(config) {}
  // Reads <dir>/scheduler_config.json.
  static absl::StatusOr<FlowMatchEulerDiscreteScheduler> load(const std::string& dir);

  // The schedule FluxPipeline.__call__ sets for `num_steps` steps at `image_seq_len` tokens.
  absl::Status set_timesteps(int64_t num_steps, int64_t image_seq_len);
  const std::vector<float>& sigmas() const { return sigmas_; }        // num_steps + 1
  const std::vector<float>& timesteps() const { return timesteps_; }  // num_steps
  int64_t num_steps() const { return static_cast<int64_t>(timesteps_.size()); }
  const FlowMatchEulerConfig& config() const { return config_; }

  // Euler step `index` in place on f32 latents: sample += (sigma[index+1] - sigma[index]) * v.
  absl::Status step(int64_t index, const Tensor& model_output, Tensor& sample) const;

 private:
  FlowMatchEulerConfig config_;
  std::vector<float> sigmas_, timesteps_;
};

}  // namespace fluxserve
