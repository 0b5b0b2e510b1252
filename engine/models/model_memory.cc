#include "engine/models/model_memory.h"

#include <algorithm>

#include "absl/strings/str_join.h"
#include "engine/models/partwise_linear.h"

namespace fluxserve {

std::string short_dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    default: return dtype_name(t);
  }
}

int64_t MemoryTally::cover(const void* p, int64_t n) {
  if (p == nullptr || n <= 0) return 0;
  uintptr_t a = reinterpret_cast<uintptr_t>(p), b = a + static_cast<uintptr_t>(n);
  const uintptr_t len = b - a;
  uintptr_t already = 0;
  // Merge every interval that overlaps or touches [a, b) into one.
  auto it = covered_.upper_bound(a);
  if (it != covered_.begin()) {
    auto prev = std::prev(it);
    if (prev->second >= a) it = prev;
  }
  while (it != covered_.end() && it->first <= b) {
    const uintptr_t lo = std::max(a, it->first), hi = std::min(b, it->second);
    if (hi > lo) already += hi - lo;
    a = std::min(a, it->first);
    b = std::max(b, it->second);
    it = covered_.erase(it);
  }
  covered_[a] = b;
  return static_cast<int64_t>(len - already);
}

void MemoryTally::weight(const Tensor& t) {
  if (!t.defined()) return;
  const int64_t n = cover(t.raw(), static_cast<int64_t>(t.nbytes()));
  m_.bytes += n;
  if (n > 0) m_.bytes_by_format[short_dtype_name(t.dtype())] += n;
}

void MemoryTally::aux(const Tensor& t) {
  if (!t.defined()) return;
  m_.bytes += cover(t.raw(), static_cast<int64_t>(t.nbytes()));
}

void MemoryTally::add_quantized(const QuantizedLinearWeight* q) {
  if (!quantized_seen_.insert(q).second) return;
  const int64_t n = q->nbytes();
  m_.bytes += n;
  m_.bytes_by_format[q->format()] += n;
}

void MemoryTally::linear(const Linear& l, int modules) {
  m_.total_layers += modules;
  if (l.has_bias) aux(l.bias);
  if (!l.quantized) {
    weight(l.weight);
    return;
  }
  if (const auto* s = dynamic_cast<const PartwiseLinearWeight*>(l.quantized.get())) {
    if (!quantized_seen_.insert(s).second) return;
    for (const PartwiseLinearWeight::Part& p : s->parts()) {
      if (p.quantized) {
        add_quantized(p.quantized.get());
        ++m_.quantized_layers;
      } else {
        weight(p.dense);
      }
    }
    return;
  }
  add_quantized(l.quantized.get());
  m_.quantized_layers += modules;  // quantized as one stack: every part is
}

ModelMemory MemoryTally::finish() const {
  ModelMemory m = m_;
  std::vector<std::pair<int64_t, std::string>> by_size;
  for (const auto& [name, bytes] : m.bytes_by_format) by_size.emplace_back(bytes, name);
  std::sort(by_size.begin(), by_size.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<std::string> names;
  for (const auto& e : by_size) names.push_back(e.second);
  m.format = names.empty() ? "none" : absl::StrJoin(names, " + ");
  return m;
}

}  // namespace fluxserve
