#include "engine/models/component_quant.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/core/check.h"
#include "engine/core/status.h"
#include "engine/models/partwise_linear.h"

namespace fluxserve {
namespace {

bool is_bnb(QuantBackend b) {
  return b == QuantBackend::kBitsAndBytes4bit || b == QuantBackend::kBitsAndBytes8bit;
}

// re.match(rf"(?:{key})(?:(?<=\.)|(?=\.|$))", name): some match of `re` from the start of `name`
// ends right after a '.', right before one, or at the end.
bool regex_prefix_at_boundary(const std::regex& re, const std::string& name) {
  for (size_t p = 0; p <= name.size(); ++p) {
    const bool boundary = (p > 0 && name[p - 1] == '.') || p == name.size() || name[p] == '.';
    if (boundary && std::regex_match(name.begin(), name.begin() + static_cast<std::ptrdiff_t>(p), re))
      return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<ComponentQuantizer> ComponentQuantizer::create(const ComponentQuantConfig& cfg,
                                                              const UpstreamQuantTraits& traits,
                                                              const std::string& component) {
  if (cfg.backend == QuantBackend::kGguf) {
    if (traits.library == QuantLibrary::kTransformers) {
      return absl::InvalidArgumentError(absl::StrCat(
          component, ": quant_backend 'gguf' does not apply: it is a transformers model, and "
                     "GGUFQuantizationConfig is a diffusers config for diffusers models"));
    }
    return absl::UnimplementedError(absl::StrCat(
        component, ": quant_backend 'gguf' cannot quantize on load: GGUFQuantizationConfig only "
                   "loads weights already quantized in a .gguf file (pre_quantized in diffusers "
                   "too); use bitsandbytes or torchao for this component"));
  }
  ComponentQuantizer q;
  q.cfg_ = cfg;
  q.library_ = traits.library;
  q.component_ = component;
  const std::optional<std::vector<std::string>>& user =
      is_bnb(cfg.backend) ? cfg.llm_int8_skip_modules : cfg.modules_to_not_convert;
  if (user) {
    q.patterns_ = *user;
  } else if (traits.library == QuantLibrary::kTransformers) {
    q.patterns_ = traits.keys_to_not_convert;  // only when the user gave no list
  }
  q.patterns_.insert(q.patterns_.end(), traits.keep_in_fp32_modules.begin(),
                     traits.keep_in_fp32_modules.end());
  if (traits.library == QuantLibrary::kTransformers) {
    for (const std::string& p : q.patterns_) {
      // std::regex reports bad patterns by throwing; nothing else here does.
      try {
        q.regexes_.emplace_back(p, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        return absl::InvalidArgumentError(absl::StrCat(
            component, ": skip-list entry '", p,
            "' is not a valid regular expression (transformers matches entries as regexes): ",
            e.what()));
      }
    }
  }
  return q;
}

bool ComponentQuantizer::converts(const std::string& module) const {
  if (library_ == QuantLibrary::kTransformers) {
    // bitsandbytes tests module names, torchao parameter names.
    const std::string name = is_bnb(cfg_.backend) ? module : module + ".weight";
    for (size_t i = 0; i < patterns_.size(); ++i) {
      if (regex_prefix_at_boundary(regexes_[i], name) || absl::EndsWith(name, patterns_[i]))
        return false;
    }
    return true;
  }
  const bool bnb = is_bnb(cfg_.backend);
  const std::string name = bnb ? module : module + ".weight";
  const size_t dot = module.rfind('.');
  const std::string child = dot == std::string::npos ? module : module.substr(dot + 1);
  for (const std::string& k : patterns_) {
    if (bnb && child == k) return false;
    if (absl::StrContains(name, k + ".") || name == k) return false;
  }
  return true;
}

absl::Status ComponentQuantizer::quantize(Linear& l, const std::vector<LinearPart>& parts) {
  if (l.quantized || parts.empty()) return absl::OkStatus();
  std::vector<bool> want;
  bool any = false;
  for (const LinearPart& p : parts) {
    want.push_back(converts(p.name));
    any = any || want.back();
  }
  if (!any) return absl::OkStatus();
  auto quantize_rows = [&](const Tensor& w, const std::string& name)
      -> absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> {
    absl::StatusOr<Tensor> w32 = w.as_f32();
    if (!w32.ok()) return w32.status();
    absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> q =
        quantize_linear_weight(*w32, cfg_, name);
    if (!q.ok()) {
      return absl::Status(q.status().code(), absl::StrCat(component_, ": ", q.status().message()));
    }
    return q;
  };
  if (parts.size() == 1) {
    FLUX_ASSIGN_OR_RETURN(std::shared_ptr<const QuantizedLinearWeight> q,
                          quantize_rows(l.weight, parts[0].name));
    if (!q) return absl::OkStatus();  // torchao leaves layers its group size does not divide
    l.quantized = std::move(q);
    l.quantized_out = l.out_features();
    l.quantized_in = l.in_features();
    l.weight = Tensor();
    converted_.push_back(parts[0].name);
    return absl::OkStatus();
  }
  std::vector<PartwiseLinearWeight::Part> out;
  int64_t off = 0, total = 0;
  const int64_t in = l.in_features();
  for (const LinearPart& p : parts) total += p.rows;
  FLUX_CHECK(total == l.out_features()) << "stacked parts do not cover " << parts[0].name;
  for (size_t i = 0; i < parts.size(); ++i) {
    PartwiseLinearWeight::Part part;
    part.rows = parts[i].rows;
    const Tensor rows = l.weight.slice0(off, part.rows);
    off += part.rows;
    if (want[i]) {
      FLUX_ASSIGN_OR_RETURN(part.quantized, quantize_rows(rows, parts[i].name));
    }
    if (part.quantized) {
      converted_.push_back(parts[i].name);
    } else {
      part.dense = rows.clone();  // its own buffer, so the stacked one is freed
    }
    out.push_back(std::move(part));
  }
  l.quantized = std::make_shared<PartwiseLinearWeight>(std::move(out), in);
  l.quantized_out = total;
  l.quantized_in = in;
  l.weight = Tensor();
  return absl::OkStatus();
}

}  // namespace fluxserve
