#include "engine/quant/quant_config.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/status.h"
#include "engine/io/json_util.h"

namespace fluxserve {

namespace {

using nlohmann::json;

constexpr const char* kSupportedBackends = "bitsandbytes_4bit, bitsandbytes_8bit, torchao, gguf";

// Backends diffusers knows (quantizers/auto.py AUTO_QUANTIZATION_CONFIG_MAPPING) that fluxserve
// does not implement: named separately so the message says why they are refused.
constexpr const char* kOtherDiffusersBackends[] = {"bfl",        "quanto",        "modelopt",
                                                   "auto-round", "nunchaku_lite", "sdnq"};

absl::Status invalid(const std::string& msg) { return absl::InvalidArgumentError(msg); }

std::string quoted_list(const std::vector<std::string>& v) {
  return absl::StrJoin(v, ", ", [](std::string* out, const std::string& s) {
    absl::StrAppend(out, "'", s, "'");
  });
}

std::optional<QuantBackend> parse_backend(const std::string& s) {
  if (s == "bitsandbytes_4bit") return QuantBackend::kBitsAndBytes4bit;
  if (s == "bitsandbytes_8bit") return QuantBackend::kBitsAndBytes8bit;
  if (s == "torchao") return QuantBackend::kTorchAo;
  if (s == "gguf") return QuantBackend::kGguf;
  return std::nullopt;
}

absl::StatusOr<QuantBackend> backend_from_string(const std::string& s, const std::string& field) {
  if (auto b = parse_backend(s)) return *b;
  for (const char* other : kOtherDiffusersBackends) {
    if (s == other) {
      return invalid(absl::StrCat(field, ": quant_backend '", s,
                                  "' is a diffusers backend that fluxserve does not support; allowed: ",
                                  kSupportedBackends));
    }
  }
  return invalid(absl::StrCat(field, ": unknown quant_backend '", s, "'; allowed: ",
                              kSupportedBackends));
}

// torch dtype names accepted where diffusers does getattr(torch, name) for a compute dtype.
std::optional<std::string> compute_dtype_name(const std::string& s) {
  if (s == "float32" || s == "float") return "float32";
  if (s == "float16" || s == "half") return "float16";
  if (s == "bfloat16") return "bfloat16";
  if (s == "float64" || s == "double") return "float64";
  return std::nullopt;
}
constexpr const char* kComputeDtypes = "float32, float16, bfloat16, float64 (or float, half, double)";

// Typed field access on one kwargs object; `where` names the object in messages
// (e.g. "quantization: quant_kwargs" or "quantization: quant_mapping.transformer").
class Fields {
 public:
  Fields(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  const json* get(const std::string& key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  const json& object() const { return j_; }
  std::string field(const std::string& key) const { return absl::StrCat(where_, ".", key); }

  absl::Status type_error(const std::string& key, const char* want) const {
    return invalid(absl::StrCat(field(key), " must be ", want, ", got ", json_type_name(*get(key))));
  }

  // A JSON null is an error here: diffusers' post_init rejects None for these booleans.
  absl::Status read_bool(const std::string& key, bool* out) const {
    const json* v = get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_boolean()) return type_error(key, "a boolean (true or false)");
    *out = v->get<bool>();
    return absl::OkStatus();
  }
  // Integers are accepted for floats (protobuf-JSON semantics); diffusers wants a Python float.
  absl::Status read_number(const std::string& key, double* out) const {
    const json* v = get(key);
    if (v == nullptr) return absl::OkStatus();
    if (!v->is_number()) return type_error(key, "a number");
    *out = v->get<double>();
    return absl::OkStatus();
  }
  absl::Status read_string_list(const std::string& key,
                                std::optional<std::vector<std::string>>* out) const {
    const json* v = get(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_array()) return type_error(key, "a list of strings or null");
    std::vector<std::string> list;
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) {
        return invalid(absl::StrCat(field(key), "[", i, "] must be a string, got ",
                                    json_type_name((*v)[i])));
      }
      list.push_back((*v)[i].get<std::string>());
    }
    *out = std::move(list);
    return absl::OkStatus();
  }
  // null keeps the default (diffusers maps None to the default dtype).
  absl::Status read_choice(const std::string& key, const std::vector<std::string>& allowed,
                           std::string* out) const {
    const json* v = get(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_string()) {
      return invalid(absl::StrCat(field(key), " must be a string, one of ", quoted_list(allowed),
                                  "; got ", json_type_name(*v)));
    }
    const std::string s = v->get<std::string>();
    if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
      return invalid(absl::StrCat(field(key), " is '", s, "'; allowed: ", quoted_list(allowed)));
    }
    *out = s;
    return absl::OkStatus();
  }
  absl::Status read_dtype(const std::string& key, std::string* out) const {
    const json* v = get(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_string()) {
      return invalid(absl::StrCat(field(key), " must be a torch dtype name (", kComputeDtypes,
                                  "), got ", json_type_name(*v)));
    }
    const std::string s = v->get<std::string>();
    auto d = compute_dtype_name(s);
    if (!d) {
      return invalid(
          absl::StrCat(field(key), " is '", s, "'; allowed: ", kComputeDtypes));
    }
    *out = *d;
    return absl::OkStatus();
  }
  // Every key must be one of `allowed` (plus `skip`, consumed by the caller).
  absl::Status check_known(const std::vector<std::string>& allowed, const std::string& owner,
                           const char* skip = nullptr) const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (skip != nullptr && it.key() == skip) continue;
      if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end()) {
        return invalid(absl::StrCat(where_, ": field '", it.key(), "' does not belong to ", owner,
                                    "; allowed: ", absl::StrJoin(allowed, ", ")));
      }
    }
    return absl::OkStatus();
  }

 private:
  const json& j_;
  std::string where_;
};

const std::vector<std::string> kBnbFields = {
    "load_in_8bit",          "load_in_4bit",
    "llm_int8_threshold",    "llm_int8_skip_modules",
    "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage"};

absl::Status parse_bnb(const Fields& f, QuantBackend backend, const std::string& where,
                       ComponentQuantConfig* c) {
  FLUX_RETURN_IF_ERROR(f.check_known(kBnbFields,
                                     absl::StrCat("BitsAndBytesConfig (quant_backend '",
                                                  quant_backend_name(backend), "')"),
                                     "quant_backend"));
  FLUX_RETURN_IF_ERROR(f.read_bool("load_in_8bit", &c->load_in_8bit));
  FLUX_RETURN_IF_ERROR(f.read_bool("load_in_4bit", &c->load_in_4bit));
  if (c->load_in_4bit && c->load_in_8bit) {
    return invalid(absl::StrCat(where, ": load_in_4bit and load_in_8bit are both true, but only "
                                       "one can be used at the same time"));
  }
  FLUX_RETURN_IF_ERROR(f.read_number("llm_int8_threshold", &c->llm_int8_threshold));
  FLUX_RETURN_IF_ERROR(f.read_string_list("llm_int8_skip_modules", &c->llm_int8_skip_modules));
  FLUX_RETURN_IF_ERROR(
      f.read_bool("llm_int8_enable_fp32_cpu_offload", &c->llm_int8_enable_fp32_cpu_offload));
  FLUX_RETURN_IF_ERROR(f.read_bool("llm_int8_has_fp16_weight", &c->llm_int8_has_fp16_weight));
  FLUX_RETURN_IF_ERROR(f.read_dtype("bnb_4bit_compute_dtype", &c->bnb_4bit_compute_dtype));
  {
    const json* v = f.get("bnb_4bit_quant_type");
    if (v != nullptr && v->is_null()) return f.type_error("bnb_4bit_quant_type", "'fp4' or 'nf4'");
  }
  FLUX_RETURN_IF_ERROR(f.read_choice("bnb_4bit_quant_type", {"fp4", "nf4"}, &c->bnb_4bit_quant_type));
  FLUX_RETURN_IF_ERROR(f.read_bool("bnb_4bit_use_double_quant", &c->bnb_4bit_use_double_quant));
  FLUX_RETURN_IF_ERROR(f.read_choice("bnb_4bit_quant_storage",
                                     {"float16", "float32", "int8", "uint8", "float64", "bfloat16"},
                                     &c->bnb_4bit_quant_storage));
  // diffusers chooses 4-bit or 8-bit from these flags alone; insist the backend name agrees so a
  // config cannot say one thing and do another (or, with neither flag, do nothing).
  if (backend == QuantBackend::kBitsAndBytes4bit && !c->load_in_4bit) {
    return invalid(absl::StrCat(f.field("load_in_4bit"),
                                " must be true for quant_backend 'bitsandbytes_4bit' (diffusers "
                                "selects the bitsandbytes mode from load_in_4bit/load_in_8bit)"));
  }
  if (backend == QuantBackend::kBitsAndBytes8bit && !c->load_in_8bit) {
    return invalid(absl::StrCat(f.field("load_in_8bit"),
                                " must be true for quant_backend 'bitsandbytes_8bit' (diffusers "
                                "selects the bitsandbytes mode from load_in_4bit/load_in_8bit)"));
  }
  return absl::OkStatus();
}

struct TorchAoType {
  const char* name;
  TorchAoKind kind;
  const char* weight_dtype;  // float8 types
  const char* granularity;
  std::vector<std::string> kwargs;
};

// diffusers' TorchAoConfig._get_torchao_quant_type_to_method (string API, diffusers <= 0.35),
// mapped to the AOBaseConfig classes. fpX[_eAmB] and uintXwo are patterns (see parse_torchao).
// The int4dq / uintx entries carry the kwargs of torchao <= 0.14's functions of those names.
const std::vector<TorchAoType>& torchao_types() {
  static const std::vector<TorchAoType> t = {
      {"int4wo", TorchAoKind::kInt4WeightOnly, "", "", {"group_size"}},
      {"int4_weight_only", TorchAoKind::kInt4WeightOnly, "", "", {"group_size"}},
      {"int8wo", TorchAoKind::kInt8WeightOnly, "", "row", {"group_size"}},
      {"int8_weight_only", TorchAoKind::kInt8WeightOnly, "", "row", {"group_size"}},
      {"int8dq", TorchAoKind::kInt8DynamicActivationInt8Weight, "", "row", {}},
      {"int8_dynamic_activation_int8_weight", TorchAoKind::kInt8DynamicActivationInt8Weight, "",
       "row", {}},
      {"float8wo", TorchAoKind::kFloat8WeightOnly, "float8_e5m2", "row", {}},
      {"float8wo_e5m2", TorchAoKind::kFloat8WeightOnly, "float8_e5m2", "row", {}},
      {"float8wo_e4m3", TorchAoKind::kFloat8WeightOnly, "float8_e4m3fn", "row", {}},
      {"float8_weight_only", TorchAoKind::kFloat8WeightOnly, "float8_e4m3fn", "row", {}},
      {"float8dq", TorchAoKind::kFloat8DynamicActivationFloat8Weight, "float8_e4m3fn", "tensor", {}},
      {"float8_dynamic_activation_float8_weight", TorchAoKind::kFloat8DynamicActivationFloat8Weight,
       "float8_e4m3fn", "tensor", {}},
      {"float8dq_e4m3", TorchAoKind::kFloat8DynamicActivationFloat8Weight, "float8_e4m3fn",
       "tensor", {}},
      {"float8dq_e4m3_tensor", TorchAoKind::kFloat8DynamicActivationFloat8Weight, "float8_e4m3fn",
       "tensor", {}},
      {"float8dq_e4m3_row", TorchAoKind::kFloat8DynamicActivationFloat8Weight, "float8_e4m3fn",
       "row", {}},
      {"int4dq", TorchAoKind::kInt8DynamicActivationInt4Weight, "", "", {"group_size", "act_mapping_type"}},
      {"int8_dynamic_activation_int4_weight", TorchAoKind::kInt8DynamicActivationInt4Weight, "", "",
       {"group_size", "act_mapping_type"}},
      {"uintx_weight_only", TorchAoKind::kUintxWeightOnly, "", "",
       {"dtype", "group_size", "pack_dim", "use_hqq"}},
  };
  return t;
}

std::string torchao_type_names() {
  std::vector<std::string> names;
  for (const auto& t : torchao_types()) names.push_back(t.name);
  return absl::StrJoin(names, ", ");
}

// Parses "fp<X>" / "fp<X>_e<A>m<B>" (single digits, as diffusers generated them for X = 3..7).
struct FpxName {
  int x = 0, a = -1, b = -1;
};
std::optional<FpxName> parse_fpx(const std::string& s) {
  auto digit = [&](size_t i) { return i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); };
  if (s.size() < 3 || s.compare(0, 2, "fp") != 0 || !digit(2)) return std::nullopt;
  FpxName f;
  f.x = s[2] - '0';
  if (s.size() == 3) return f;
  if (s.size() == 8 && s[3] == '_' && s[4] == 'e' && digit(5) && s[6] == 'm' && digit(7)) {
    f.a = s[5] - '0';
    f.b = s[7] - '0';
    return f;
  }
  return std::nullopt;
}

// "uint<X>" / "torch.uint<X>" (X = 1..7), as a dtype kwarg or inside "uint<X>wo"; 0 otherwise.
int uintx_bits(const std::string& s) {
  const std::string t = s.compare(0, 6, "torch.") == 0 ? s.substr(6) : s;
  if (t.size() == 5 && t.compare(0, 4, "uint") == 0 && t[4] >= '1' && t[4] <= '7') return t[4] - '0';
  return 0;
}

absl::Status parse_torchao(const Fields& f, const std::string& where, ComponentQuantConfig* c) {
  const json* qt = f.get("quant_type");
  if (qt == nullptr || qt->is_null()) {
    return invalid(absl::StrCat(f.field("quant_type"), " is required for quant_backend 'torchao'; "
                                "allowed: ", torchao_type_names()));
  }
  if (!qt->is_string()) {
    return invalid(absl::StrCat(f.field("quant_type"), " must be a string, one of ",
                                torchao_type_names(), "; got ", json_type_name(*qt)));
  }
  c->quant_type = qt->get<std::string>();
  const std::string qfield = f.field("quant_type");
  const std::string& name = c->quant_type;
  const TorchAoType* type = nullptr;
  for (const auto& t : torchao_types()) {
    if (name == t.name) type = &t;
  }
  TorchAoType pattern;  // fpX[_eAmB] / uintXwo, which the table cannot list one by one
  if (type == nullptr) {
    if (auto fp = parse_fpx(name)) {
      if (fp->a >= 0 && fp->x != fp->a + fp->b + 1) {
        return invalid(absl::StrCat(qfield, " '", name, "': fpX_eAmB needs X = A + B + 1 (sign, ",
                                    "exponent and mantissa bits), but ", fp->x, " != ", fp->a,
                                    " + ", fp->b, " + 1"));
      }
      if (fp->x < 3 || fp->x > 7 || (fp->a >= 0 && fp->a < 1)) {
        return invalid(absl::StrCat(qfield, " '", name, "': fpX types exist for X = 3..7 with ",
                                    "A >= 1 (fp3 .. fp7, fp6_e3m2, ...)"));
      }
      // Old diffusers' generate_fpx_quantization_types: "fpX" alone means ebits = X / 2.
      c->fpx_ebits = fp->a >= 0 ? fp->a : fp->x / 2;
      c->fpx_mbits = fp->x - 1 - c->fpx_ebits;
      pattern = {"fpX", TorchAoKind::kFpxWeightOnly, "", "", {}};
    } else if (name.size() == 7 && name.compare(5, 2, "wo") == 0 && uintx_bits(name.substr(0, 5)) > 0) {
      c->uintx_bits = uintx_bits(name.substr(0, 5));
      pattern = {"uintXwo", TorchAoKind::kUintxWeightOnly, "", "", {"group_size", "pack_dim", "use_hqq"}};
    } else if (name == "float8_static_activation_float8_weight") {
      return invalid(absl::StrCat(qfield, " '", name, "' needs a calibrated activation scale, which ",
                                  "a quantization config cannot carry; allowed: ",
                                  torchao_type_names(), ", fpX[_eAmB], uint1wo..uint7wo"));
    } else {
      return invalid(absl::StrCat(qfield, " '", name, "' is not a known torchao quantization ",
                                  "type; allowed: ", torchao_type_names(),
                                  ", fpX[_eAmB] (X = 3..7), uint1wo..uint7wo"));
    }
    type = &pattern;
  }
  c->torchao_kind = type->kind;
  c->weight_dtype = type->weight_dtype;
  c->granularity = type->granularity;
  if (type->kind == TorchAoKind::kInt4WeightOnly) c->group_size = 128;
  if (type->kind == TorchAoKind::kInt8DynamicActivationInt4Weight) c->group_size = 32;
  if (type->kind == TorchAoKind::kUintxWeightOnly) c->group_size = 64;

  // Everything but quant_type / modules_to_not_convert is a kwarg of the quantization method.
  FLUX_RETURN_IF_ERROR(f.read_string_list("modules_to_not_convert", &c->modules_to_not_convert));
  for (const auto& [key, value] : f.object().items()) {
    if (key == "quant_backend" || key == "quant_type" || key == "modules_to_not_convert") continue;
    if (std::find(type->kwargs.begin(), type->kwargs.end(), key) == type->kwargs.end()) {
      return invalid(absl::StrCat(where, ": quant_type '", name,
                                  "' does not support the keyword argument '", key,
                                  "'; supported: ",
                                  type->kwargs.empty() ? std::string("none")
                                                       : absl::StrJoin(type->kwargs, ", "),
                                  " (plus quant_type, modules_to_not_convert)"));
    }
    c->quant_type_kwargs[key] = value;
  }
  if (const json* g = f.get("group_size"); g != nullptr) {
    if (type->kind == TorchAoKind::kInt4WeightOnly) {
      if (!g->is_number_integer() || !(*g == 32 || *g == 64 || *g == 128 || *g == 256)) {
        return invalid(absl::StrCat(f.field("group_size"), " is ", g->dump(),
                                    "; allowed for int4 weight-only: 32, 64, 128, 256"));
      }
      c->group_size = g->get<int64_t>();
    } else if (type->kind != TorchAoKind::kInt8WeightOnly) {
      // int4dq and uintX quantize in groups; torchao has no per-row form of them.
      if (!g->is_number_integer() || g->get<int64_t>() <= 0) {
        return invalid(absl::StrCat(f.field("group_size"), " is ", g->dump(),
                                    "; allowed: a positive integer"));
      }
      c->group_size = g->get<int64_t>();
    } else if (!g->is_null()) {
      if (!g->is_number_integer() || g->get<int64_t>() <= 0) {
        return invalid(absl::StrCat(f.field("group_size"), " is ", g->dump(),
                                    "; allowed: a positive integer or null (per row)"));
      }
      c->group_size = g->get<int64_t>();
    }
  }
  if (type->kind == TorchAoKind::kUintxWeightOnly && c->uintx_bits == 0) {
    const json* d = f.get("dtype");  // uintx_weight_only(dtype, ...): dtype is required
    c->uintx_bits = d != nullptr && d->is_string() ? uintx_bits(d->get<std::string>()) : 0;
    if (c->uintx_bits == 0) {
      return invalid(absl::StrCat(f.field("dtype"), d == nullptr ? " is required" : " is " + d->dump(),
                                  " for quant_type '", name, "'; allowed: 'uint1' .. 'uint7' ",
                                  "(or 'torch.uint1' .. 'torch.uint7')"));
    }
  }
  if (const json* a = f.get("act_mapping_type"); a != nullptr) {
    std::string v = a->is_string() ? a->get<std::string>() : "";
    std::transform(v.begin(), v.end(), v.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (v.compare(0, 12, "mappingtype.") == 0) v = v.substr(12);
    if (v != "asymmetric" && v != "symmetric") {
      return invalid(absl::StrCat(f.field("act_mapping_type"), " is ", a->dump(),
                                  "; allowed: 'asymmetric' (uint8 activations, the default), ",
                                  "'symmetric' (int8)"));
    }
    c->act_symmetric = v == "symmetric";
  }
  if (const json* p = f.get("pack_dim"); p != nullptr) {
    // Only the packed layout depends on it; fluxserve keeps uintX codes unpacked.
    if (!p->is_number_integer() || p->get<int64_t>() < -2 || p->get<int64_t>() > 1) {
      return invalid(absl::StrCat(f.field("pack_dim"), " is ", p->dump(),
                                  "; allowed: -2, -1, 0, 1 (a dimension of the 2-D weight)"));
    }
  }
  if (const json* h = f.get("use_hqq"); h != nullptr) {
    if (!h->is_boolean()) return f.type_error("use_hqq", "a boolean");
    if (h->get<bool>()) {
      return invalid(absl::StrCat(f.field("use_hqq"), " is true; HQQ's optimized uintX ",
                                  "parameters are not implemented (use_hqq=false is)"));
    }
  }
  return absl::OkStatus();
}

absl::Status parse_gguf(const Fields& f, ComponentQuantConfig* c) {
  FLUX_RETURN_IF_ERROR(
      f.check_known({"compute_dtype"}, "GGUFQuantizationConfig (quant_backend 'gguf')",
                    "quant_backend"));
  return f.read_dtype("compute_dtype", &c->compute_dtype);
}

absl::StatusOr<ComponentQuantConfig> parse_component(const json& kwargs, QuantBackend backend,
                                                      const std::string& where) {
  if (!kwargs.is_object()) {
    return invalid(absl::StrCat(where, " must be a JSON object, got ", json_type_name(kwargs)));
  }
  Fields f(kwargs, where);
  ComponentQuantConfig c;
  c.backend = backend;
  switch (backend) {
    case QuantBackend::kBitsAndBytes4bit:
    case QuantBackend::kBitsAndBytes8bit:
      FLUX_RETURN_IF_ERROR(parse_bnb(f, backend, where, &c));
      break;
    case QuantBackend::kTorchAo:
      FLUX_RETURN_IF_ERROR(parse_torchao(f, where, &c));
      break;
    case QuantBackend::kGguf:
      FLUX_RETURN_IF_ERROR(parse_gguf(f, &c));
      break;
  }
  return c;
}

const PipelineComponent* find_component(const std::string& name) {
  for (const auto& c : flux_pipeline_components()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

std::string module_component_names() {
  std::vector<std::string> v;
  for (const auto& c : flux_pipeline_components()) {
    if (c.is_module) v.push_back(c.name);
  }
  return absl::StrJoin(v, ", ");
}

// diffusers' _maybe_warn_for_wrong_component_in_quant_config, plus a note for components that
// exist but are not torch modules (diffusers skips them silently).
void warn_components(const std::vector<std::string>& names, const std::string& field,
                     std::vector<std::string>* warnings) {
  for (const auto& n : names) {
    const PipelineComponent* c = find_component(n);
    if (c == nullptr) {
      warnings->push_back(absl::StrCat(field, ": component '", n,
                                       "' will be ignored as it does not belong to a FluxPipeline; "
                                       "quantizable components: ",
                                       module_component_names()));
    } else if (!c->is_module) {
      warnings->push_back(absl::StrCat(field, ": component '", n,
                                       "' is not a model and is never quantized; quantizable "
                                       "components: ",
                                       module_component_names()));
    }
  }
}

json optional_list(const std::optional<std::vector<std::string>>& v) {
  return v ? json(*v) : json(nullptr);
}

}  // namespace

const char* quant_backend_name(QuantBackend b) {
  switch (b) {
    case QuantBackend::kBitsAndBytes4bit: return "bitsandbytes_4bit";
    case QuantBackend::kBitsAndBytes8bit: return "bitsandbytes_8bit";
    case QuantBackend::kTorchAo: return "torchao";
    case QuantBackend::kGguf: return "gguf";
  }
  return "?";
}

const char* torchao_config_class(TorchAoKind k) {
  switch (k) {
    case TorchAoKind::kInt4WeightOnly: return "Int4WeightOnlyConfig";
    case TorchAoKind::kInt8WeightOnly: return "Int8WeightOnlyConfig";
    case TorchAoKind::kInt8DynamicActivationInt8Weight: return "Int8DynamicActivationInt8WeightConfig";
    case TorchAoKind::kFloat8WeightOnly: return "Float8WeightOnlyConfig";
    case TorchAoKind::kFloat8DynamicActivationFloat8Weight:
      return "Float8DynamicActivationFloat8WeightConfig";
    case TorchAoKind::kInt8DynamicActivationInt4Weight: return "Int8DynamicActivationInt4WeightConfig";
    case TorchAoKind::kFpxWeightOnly: return "FPXWeightOnlyConfig";
    case TorchAoKind::kUintxWeightOnly: return "UIntXWeightOnlyConfig";
  }
  return "?";
}

const std::vector<PipelineComponent>& flux_pipeline_components() {
  static const std::vector<PipelineComponent> c = {
      {"scheduler", false, true},     {"text_encoder", true, false}, {"tokenizer", false, false},
      {"text_encoder_2", true, false}, {"tokenizer_2", false, false}, {"transformer", true, true},
      {"vae", true, true}};
  return c;
}

}  // namespace fluxserve

namespace fluxserve {

nlohmann::json ComponentQuantConfig::to_json() const {
  switch (backend) {
    case QuantBackend::kBitsAndBytes4bit:
    case QuantBackend::kBitsAndBytes8bit:
      return {{"quant_method", "bitsandbytes"},
              {"load_in_8bit", load_in_8bit},
              {"load_in_4bit", load_in_4bit},
              {"llm_int8_threshold", llm_int8_threshold},
              {"llm_int8_skip_modules", optional_list(llm_int8_skip_modules)},
              {"llm_int8_enable_fp32_cpu_offload", llm_int8_enable_fp32_cpu_offload},
              {"llm_int8_has_fp16_weight", llm_int8_has_fp16_weight},
              {"bnb_4bit_quant_type", bnb_4bit_quant_type},
              {"bnb_4bit_use_double_quant", bnb_4bit_use_double_quant},
              {"bnb_4bit_compute_dtype", bnb_4bit_compute_dtype},
              {"bnb_4bit_quant_storage", bnb_4bit_quant_storage}};
    case QuantBackend::kTorchAo: {
      json data = json::object();
      if (torchao_kind == TorchAoKind::kInt4WeightOnly ||
          torchao_kind == TorchAoKind::kInt8WeightOnly) {
        data["group_size"] = group_size ? json(*group_size) : json(nullptr);
      }
      if (torchao_kind == TorchAoKind::kInt8DynamicActivationInt4Weight) {
        data["group_size"] = group_size.value_or(32);
        data["act_mapping_type"] = act_symmetric ? "SYMMETRIC" : "ASYMMETRIC";
      }
      if (torchao_kind == TorchAoKind::kFpxWeightOnly) {
        data["ebits"] = fpx_ebits;
        data["mbits"] = fpx_mbits;
      }
      if (torchao_kind == TorchAoKind::kUintxWeightOnly) {
        data["dtype"] = absl::StrCat("torch.uint", uintx_bits);
        data["group_size"] = group_size.value_or(64);
      }
      if (!weight_dtype.empty()) data["weight_dtype"] = weight_dtype;
      if (!granularity.empty()) data["granularity"] = granularity;
      return {{"quant_method", "torchao"},
              {"quant_type", quant_type},
              {"quant_type_kwargs", quant_type_kwargs},
              {"modules_to_not_convert", optional_list(modules_to_not_convert)},
              {"torchao_config", {{"_type", torchao_config_class(torchao_kind)}, {"_data", data}}}};
    }
    case QuantBackend::kGguf:
      return {{"quant_method", "gguf"},
              {"compute_dtype", compute_dtype},
              {"pre_quantized", true},
              {"modules_to_not_convert", nullptr}};
  }
  return nullptr;
}

absl::StatusOr<PipelineQuantConfig> PipelineQuantConfig::from_json(const nlohmann::json& j,
                                                                   const std::string& what) {
  if (!j.is_object()) {
    return invalid(absl::StrCat(what, ": expected a JSON object, got ", json_type_name(j)));
  }
  auto field = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  const json* backend = field("quant_backend");
  const json* kwargs = field("quant_kwargs");
  const json* components = field("components_to_quantize");
  const json* mapping = field("quant_mapping");
  if (backend != nullptr && !backend->is_string()) {
    return invalid(absl::StrCat(what, ": quant_backend must be a string, one of ",
                                kSupportedBackends, "; got ", json_type_name(*backend)));
  }
  if (kwargs != nullptr && !kwargs->is_object()) {
    return invalid(absl::StrCat(what, ": quant_kwargs must be an object of the backend's "
                                "config arguments, got ", json_type_name(*kwargs)));
  }
  if (mapping != nullptr && !mapping->is_object()) {
    return invalid(absl::StrCat(what, ": quant_mapping must be an object {component: config}, got ",
                                json_type_name(*mapping)));
  }
  // Python truthiness, as _validate_init_args tests it: "" and {} count as not given.
  const bool has_backend = backend != nullptr && !backend->get<std::string>().empty();
  const bool has_mapping = mapping != nullptr && !mapping->empty();
  const bool has_kwargs = kwargs != nullptr && !kwargs->empty();
  if (has_backend && mapping != nullptr) {
    return invalid(absl::StrCat(what, ": both quant_backend and quant_mapping are given; use "
                                "either quant_backend + quant_kwargs (+ components_to_quantize) "
                                "or quant_mapping"));
  }
  if (!has_backend && !has_mapping) {
    return invalid(absl::StrCat(what, ": must provide quant_backend (one of ", kSupportedBackends,
                                ") when not providing a non-empty quant_mapping"));
  }
  if (!has_kwargs && !has_mapping) {
    return invalid(absl::StrCat(what, ": quant_kwargs is missing or empty; with quant_backend '",
                                backend->get<std::string>(),
                                "' give the config arguments, e.g. {\"load_in_4bit\": true}"));
  }

  PipelineQuantConfig out;
  if (has_mapping) {
    out.granular_ = true;
    if (has_kwargs) {
      return invalid(absl::StrCat(what, ": quant_kwargs is not used with quant_mapping (diffusers "
                                  "ignores it); put the arguments in each quant_mapping entry"));
    }
    if (components != nullptr) {
      return invalid(absl::StrCat(what, ": components_to_quantize is not used with quant_mapping; "
                                  "the mapping's keys are the components to quantize"));
    }
    std::vector<std::string> names;
    for (const auto& [name, entry] : mapping->items()) {
      const std::string where = absl::StrCat(what, ": quant_mapping.", name);
      if (!entry.is_object()) {
        return invalid(absl::StrCat(where, " must be an object {\"quant_backend\": ..., ",
                                    "<config arguments>}, got ", json_type_name(entry)));
      }
      auto b = entry.find("quant_backend");
      if (b == entry.end() || b->is_null()) {
        return invalid(absl::StrCat(where, ".quant_backend is required; allowed: ",
                                    kSupportedBackends));
      }
      if (!b->is_string()) {
        return invalid(absl::StrCat(where, ".quant_backend must be a string, one of ",
                                    kSupportedBackends, "; got ", json_type_name(*b)));
      }
      FLUX_ASSIGN_OR_RETURN(QuantBackend qb,
                            backend_from_string(b->get<std::string>(), where + ".quant_backend"));
      FLUX_ASSIGN_OR_RETURN(ComponentQuantConfig c, parse_component(entry, qb, where));
      const PipelineComponent* pc = find_component(name);
      if (qb == QuantBackend::kGguf && pc != nullptr && pc->is_module && !pc->is_diffusers_model) {
        return invalid(absl::StrCat(where, ": quant_backend 'gguf' applies only to diffusers "
                                    "models (transformer, vae), not to the transformers model '",
                                    name, "'"));
      }
      names.push_back(name);
      out.mapping_.emplace_back(name, std::move(c));
    }
    warn_components(names, what + ": quant_mapping", &out.warnings_);
    return out;
  }

  const std::string bname = backend->get<std::string>();
  FLUX_ASSIGN_OR_RETURN(QuantBackend qb, backend_from_string(bname, what + ": quant_backend"));
  if (qb == QuantBackend::kTorchAo || qb == QuantBackend::kGguf) {
    // _validate_init_kwargs_in_backends: the diffusers and transformers config classes must take
    // the same arguments; for torchao and gguf they do not, so diffusers refuses the global form.
    return invalid(absl::StrCat(
        what, ": quant_backend '", bname,
        "' cannot be used with quant_kwargs: the diffusers and transformers config classes take "
        "different arguments, so diffusers requires quant_mapping, e.g. {\"quant_mapping\": "
        "{\"transformer\": {\"quant_backend\": \"",
        bname, "\", ...}}}; quant_kwargs works for bitsandbytes_4bit, bitsandbytes_8bit"));
  }
  FLUX_ASSIGN_OR_RETURN(ComponentQuantConfig c,
                        parse_component(*kwargs, qb, what + ": quant_kwargs"));
  out.backend_ = qb;
  out.global_ = std::move(c);
  if (components != nullptr) {
    std::vector<std::string> names;
    if (components->is_string()) {
      if (!components->get<std::string>().empty()) names.push_back(components->get<std::string>());
    } else if (components->is_array()) {
      for (size_t i = 0; i < components->size(); ++i) {
        const json& e = (*components)[i];
        if (!e.is_string()) {
          return invalid(absl::StrCat(what, ": components_to_quantize[", i,
                                      "] must be a component name (", module_component_names(),
                                      "), got ", json_type_name(e)));
        }
        names.push_back(e.get<std::string>());
      }
    } else {
      return invalid(absl::StrCat(what, ": components_to_quantize must be a string or a list of "
                                  "component names (", module_component_names(), "), got ",
                                  json_type_name(*components)));
    }
    if (!names.empty()) {
      warn_components(names, what + ": components_to_quantize", &out.warnings_);
      out.components_to_quantize_ = std::move(names);
    }
  }
  return out;
}

std::optional<ComponentQuantConfig> PipelineQuantConfig::resolve(const std::string& component,
                                                                 bool is_diffusers_model) const {
  (void)is_diffusers_model;  // the normalized config is the same for both libraries' classes
  if (granular_) {
    for (const auto& [name, c] : mapping_) {
      if (name == component) return c;
    }
    return std::nullopt;
  }
  if (components_to_quantize_) {
    const auto& v = *components_to_quantize_;
    if (std::find(v.begin(), v.end(), component) == v.end()) return std::nullopt;
  }
  return global_;
}

std::optional<ComponentQuantConfig> PipelineQuantConfig::resolve(
    const std::string& component) const {
  const PipelineComponent* pc = find_component(component);
  if (pc == nullptr || !pc->is_module) return std::nullopt;
  return resolve(component, pc->is_diffusers_model);
}

nlohmann::json PipelineQuantConfig::to_json() const {
  auto entry = [](const ComponentQuantConfig& c) {
    json e = c.to_json();
    e.erase("quant_method");
    json out = {{"quant_backend", quant_backend_name(c.backend)}};
    if (c.backend == QuantBackend::kTorchAo) {
      out["quant_type"] = c.quant_type;
      for (const auto& [k, v] : c.quant_type_kwargs.items()) out[k] = v;
      out["modules_to_not_convert"] = e["modules_to_not_convert"];
      return out;
    }
    if (c.backend == QuantBackend::kGguf) {
      out["compute_dtype"] = c.compute_dtype;
      return out;
    }
    out.update(e);
    return out;
  };
  if (granular_) {
    json m = json::object();
    for (const auto& [name, c] : mapping_) m[name] = entry(c);
    return {{"quant_mapping", m}};
  }
  json kw = entry(*global_);
  kw.erase("quant_backend");
  json out = {{"quant_backend", quant_backend_name(*backend_)}, {"quant_kwargs", kw}};
  if (components_to_quantize_) out["components_to_quantize"] = *components_to_quantize_;
  return out;
}

}  // namespace fluxserve
