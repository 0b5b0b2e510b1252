#include "engine/pipeline/scheduler.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json_util.h"

namespace fluxserve {

absl::StatusOr<FlowMatchEulerConfig> FlowMatchEulerConfig::from_json(const nlohmann::json& j,
                                                                     const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(what + ": config is not a JSON object");
  ConfigReader r(j, what);
  FlowMatchEulerConfig c;
  if (r.has("_class_name")) {
    FLUX_ASSIGN_OR_RETURN(std::string cls, r.get_string("_class_name"));
    if (cls != "FlowMatchEulerDiscreteScheduler") {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": _class_name is '", cls, "', expected 'FlowMatchEulerDiscreteScheduler'"));
    }
  }
  FLUX_ASSIGN_OR_RETURN(c.num_train_timesteps, r.get_int("num_train_timesteps", 1000));
  FLUX_ASSIGN_OR_RETURN(c.shift, r.get_double("shift", 1.0));
  FLUX_ASSIGN_OR_RETURN(c.use_dynamic_shifting, r.get_bool("use_dynamic_shifting", false));
  FLUX_ASSIGN_OR_RETURN(c.base_shift, r.get_double("base_shift", 0.5));
  FLUX_ASSIGN_OR_RETURN(c.max_shift, r.get_double("max_shift", 1.15));
  FLUX_ASSIGN_OR_RETURN(c.base_image_seq_len, r.get_int("base_image_seq_len", 256));
  FLUX_ASSIGN_OR_RETURN(c.max_image_seq_len, r.get_int("max_image_seq_len", 4096));
  FLUX_ASSIGN_OR_RETURN(c.invert_sigmas, r.get_bool("invert_sigmas", false));
  FLUX_ASSIGN_OR_RETURN(c.shift_terminal, r.get_double("shift_terminal", 0.0));
  FLUX_ASSIGN_OR_RETURN(std::string tst, r.get_string("time_shift_type", "exponential"));
  if (tst != "exponential" && tst != "linear") {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": time_shift_type must be 'exponential' or 'linear', got '", tst, "'"));
  }
  c.linear_time_shift = tst == "linear";
  for (const char* unsupported :
       {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"}) {
    FLUX_ASSIGN_OR_RETURN(bool on, r.get_bool(unsupported, false));
    if (on) {
      return absl::UnimplementedError(
          absl::StrCat(what, ": ", unsupported, "=true is not supported by fluxserve"));
    }
  }
  if (c.num_train_timesteps <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": num_train_timesteps must be > 0"));
  }
  if (c.use_dynamic_shifting && c.max_image_seq_len == c.base_image_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": max_image_seq_len must differ from base_image_seq_len"));
  }
  if (c.shift_terminal >= 1.0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": shift_terminal must be < 1"));
  }
  return c;
}

double calculate_shift(int64_t image_seq_len, int64_t base_seq_len, int64_t max_seq_len,
                       double base_shift, double max_shift) {
  const double m = (max_shift - base_shift) / static_cast<double>(max_seq_len - base_seq_len);
  const double b = base_shift - m * static_cast<double>(base_seq_len);
  return static_cast<double>(image_seq_len) * m + b;
}

absl::StatusOr<FlowMatchEulerDiscreteScheduler> FlowMatchEulerDiscreteScheduler::load(
    const std::string& dir) {
  const std::string path = dir + "/scheduler_config.json";
  FLUX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
  FLUX_ASSIGN_OR_RETURN(FlowMatchEulerConfig c, FlowMatchEulerConfig::from_json(j, path));
  return FlowMatchEulerDiscreteScheduler(c);
}

absl::Status FlowMatchEulerDiscreteScheduler::set_timesteps(int64_t n, int64_t image_seq_len) {
  if (n <= 0 || n > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_inference_steps must be between 1 and 100000, got ", n));
  }
  if (image_seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image sequence length must be positive, got ", image_seq_len));
  }
  const FlowMatchEulerConfig& c = config_;
  // numpy float64 linspace(1.0, 1/n, n), then .astype(float32). Python scalars entering numpy
  // float32 arithmetic below are 'weak' (NEP 50): they are rounded to float32 first.
  std::vector<float> s(static_cast<size_t>(n));
  const double start = 1.0, stop = 1.0 / static_cast<double>(n);
  if (n == 1) {
    s[0] = static_cast<float>(start);
  } else {
    const double step = (stop - start) / static_cast<double>(n - 1);
    for (int64_t i = 0; i < n; ++i) s[i] = static_cast<float>(start + static_cast<double>(i) * step);
    s[n - 1] = static_cast<float>(stop);
  }
  if (c.use_dynamic_shifting) {
    const double mu = calculate_shift(image_seq_len, c.base_image_seq_len, c.max_image_seq_len,
                                      c.base_shift, c.max_shift);
    const float a = static_cast<float>(c.linear_time_shift ? mu : std::exp(mu));
    for (float& v : s) {
      const float r = 1.0f / v - 1.0f;  // (1/t - 1) ** 1.0
      v = a / (a + r);
    }
  } else {
    const float shift = static_cast<float>(c.shift), shift_m1 = static_cast<float>(c.shift - 1.0);
    for (float& v : s) v = (shift * v) / (1.0f + shift_m1 * v);
  }
  if (c.shift_terminal != 0.0) {
    const float scale = (1.0f - s.back()) / static_cast<float>(1.0 - c.shift_terminal);
    for (float& v : s) v = 1.0f - ((1.0f - v) / scale);
  }
  const float train = static_cast<float>(c.num_train_timesteps);
  if (c.invert_sigmas) {
    for (float& v : s) v = 1.0f - v;
  }
  timesteps_.resize(s.size());
  for (size_t i = 0; i < s.size(); ++i) timesteps_[i] = s[i] * train;
  s.push_back(c.invert_sigmas ? 1.0f : 0.0f);
  sigmas_ = std::move(s);
  return absl::OkStatus();
}

absl::Status FlowMatchEulerDiscreteScheduler::step(int64_t index, const Tensor& model_output,
                                                   Tensor& sample) const {
  if (index < 0 || index >= num_steps()) {
    return absl::OutOfRangeError(
        absl::StrCat("scheduler step ", index, " outside [0, ", num_steps(), ")"));
  }
  if (model_output.shape() != sample.shape() || sample.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("scheduler step: model output ",
                                                   model_output.shape_str(), " vs sample ",
                                                   sample.shape_str(), " (f32 expected)"));
  }
  FLUX_ASSIGN_OR_RETURN(Tensor v, model_output.as_f32());
  const float dt = sigmas_[index + 1] - sigmas_[index];
  float* x = sample.data<float>();
  const float* vp = v.data<float>();
  const int64_t n = sample.numel();
  for (int64_t i = 0; i < n; ++i) {
    const float d = dt * vp[i];  // torch: mul then add, each rounded to float32
    x[i] = x[i] + d;
  }
  return absl::OkStatus();
}

}  // namespace fluxserve
