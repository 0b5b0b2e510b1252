#include "engine/quant/quantized_linear.h"

#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/quant/bnb_formats.h"
#include "engine/quant/torchao_formats.h"

namespace fluxserve {
namespace {

int64_t bytes_of(const Tensor& t) { return t.defined() ? static_cast<int64_t>(t.nbytes()) : 0; }

// Runs a 2-D kernel on x viewed as [rows, K] and restores the leading dimensions.
template <class F>
absl::StatusOr<Tensor> on_rows(const Tensor& x, int64_t n, F&& f) {
  if (x.dtype() != DType::kF32) return absl::InvalidArgumentError("quantized linear: f32 input only");
  const int64_t k = x.size(-1), rows = x.numel() / std::max<int64_t>(k, 1);
  absl::StatusOr<Tensor> y = f(x.reshape({rows, k}));
  if (!y.ok()) return y.status();
  Shape shape = x.shape();
  shape.back() = n;
  return y->reshape(shape);
}

class Bnb4Linear final : public QuantizedLinearWeight {
 public:
  explicit Bnb4Linear(Bnb4Weight w) : w_(std::move(w)) {}
  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const override {
    return on_rows(x, w_.shape[0], [&](const Tensor& x2) -> absl::StatusOr<Tensor> {
      return bnb4_linear(x2, w_, bias);
    });
  }
  Tensor dequantize() const override { return bnb4_dequantize(w_); }
  int64_t nbytes() const override {
    return bytes_of(w_.packed) + bytes_of(w_.absmax) + bytes_of(w_.quant_map) +
           bytes_of(w_.nested_absmax) + bytes_of(w_.nested_quant_map);
  }
  std::string format() const override {
    return absl::StrCat("bitsandbytes ", quant4_name(w_.quant_type), w_.nested ? " (double quant)" : "");
  }

 private:
  Bnb4Weight w_;
};

class Bnb8Linear final : public QuantizedLinearWeight {
 public:
  Bnb8Linear(Bnb8Weight w, float threshold) : w_(std::move(w)), threshold_(threshold) {}
  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const override {
    return on_rows(x, w_.cb.size(0), [&](const Tensor& x2) -> absl::StatusOr<Tensor> {
      return bnb8_linear(x2, w_, bias, threshold_);
    });
  }
  Tensor dequantize() const override { return bnb8_dequantize(w_); }
  int64_t nbytes() const override { return bytes_of(w_.cb) + bytes_of(w_.scb); }
  std::string format() const override { return absl::StrCat("bitsandbytes LLM.int8 (threshold ", threshold_, ")"); }

 private:
  Bnb8Weight w_;
  float threshold_;
};

class TorchAoLinear final : public QuantizedLinearWeight {
 public:
  explicit TorchAoLinear(torchao::QuantizedWeight w) : w_(std::move(w)) {}
  absl::StatusOr<Tensor> forward(const Tensor& x, const Tensor* bias) const override {
    return on_rows(x, w_.out_features(), [&](const Tensor& x2) {
      return torchao::quantized_linear(x2, w_, bias);
    });
  }
  Tensor dequantize() const override { return torchao::dequantize_weight(w_); }
  int64_t nbytes() const override {
    return bytes_of(w_.qdata) + bytes_of(w_.scale) + bytes_of(w_.zero_point);
  }
  std::string format() const override { return absl::StrCat("torchao ", w_.spec.name); }

 private:
  torchao::QuantizedWeight w_;
};

// diffusers' TorchAoConfig class -> our quant_type spelling.
std::string torchao_quant_type(const ComponentQuantConfig& c) {
  switch (c.torchao_kind) {
    case TorchAoKind::kInt4WeightOnly: return "int4wo";
    case TorchAoKind::kInt8WeightOnly: return "int8wo";
    case TorchAoKind::kInt8DynamicActivationInt8Weight: return "int8dq";
    case TorchAoKind::kFloat8WeightOnly:
      return c.weight_dtype == "float8_e4m3fn" ? "float8wo_e4m3" : "float8wo_e5m2";
    case TorchAoKind::kFloat8DynamicActivationFloat8Weight:
      return c.granularity == "row" ? "float8dq_e4m3_row" : "float8dq_e4m3_tensor";
    // The three below follow torchao <= 0.14's primitives (their config classes are gone upstream).
    case TorchAoKind::kInt8DynamicActivationInt4Weight: return "int4dq";
    case TorchAoKind::kFpxWeightOnly:
      return absl::StrCat("fp", 1 + c.fpx_ebits + c.fpx_mbits, "_e", c.fpx_ebits, "m", c.fpx_mbits);
    case TorchAoKind::kUintxWeightOnly: return absl::StrCat("uint", c.uintx_bits, "wo");
  }
  return c.quant_type;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const QuantizedLinearWeight>> quantize_linear_weight(
    const Tensor& w, const ComponentQuantConfig& cfg, const std::string& module) {
  auto where = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(module, ": ", s.message()));
  };
  switch (cfg.backend) {
    case QuantBackend::kBitsAndBytes4bit: {
      Bnb4Options opt;
      opt.quant_type = cfg.bnb_4bit_quant_type == "nf4" ? Quant4::kNF4 : Quant4::kFP4;
      opt.double_quant = cfg.bnb_4bit_use_double_quant;
      absl::StatusOr<Bnb4Weight> q = bnb4_quantize(w, opt);
      if (!q.ok()) return where(q.status());
      return std::make_shared<Bnb4Linear>(std::move(*q));
    }
    case QuantBackend::kBitsAndBytes8bit: {
      absl::StatusOr<Tensor> w32 = w.as_f32();
      if (!w32.ok()) return where(w32.status());
      absl::StatusOr<Bnb8Weight> q = bnb8_quantize(*w32);
      if (!q.ok()) return where(q.status());
      return std::make_shared<Bnb8Linear>(std::move(*q), static_cast<float>(cfg.llm_int8_threshold));
    }
    case QuantBackend::kTorchAo: {
      absl::StatusOr<torchao::FormatSpec> spec =
          torchao::parse_quant_type(torchao_quant_type(cfg), cfg.group_size.value_or(0));
      if (!spec.ok()) return where(spec.status());
      spec->act_symmetric = cfg.act_symmetric;
      // torchao leaves a layer whose in_features its group size does not divide unquantized.
      if (spec->group_size > 0 && w.size(1) % spec->group_size != 0) return nullptr;
      Tensor src = w;
      if (w.dtype() != DType::kF32 && w.dtype() != DType::kBF16) {
        absl::StatusOr<Tensor> w32 = w.as_f32();
        if (!w32.ok()) return where(w32.status());
        src = *w32;
      }
      absl::StatusOr<torchao::QuantizedWeight> q = torchao::quantize_weight(src, *spec);
      if (!q.ok()) return where(q.status());
      return std::make_shared<TorchAoLinear>(std::move(*q));
    }
    case QuantBackend::kGguf:
      return absl::UnimplementedError(absl::StrCat(
          module, ": the gguf backend loads weights from a .gguf file; it cannot quantize a "
                  "safetensors checkpoint on load"));
  }
  return absl::InternalError("unknown quantization backend");
}

}  // namespace fluxserve
