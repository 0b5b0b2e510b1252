// Unicode facts the tokenizers need, without ICU: UTF-8 <-> code points, the regex classes
// \p{L} / \p{N} / \s, NFC and per-code-point lowercasing as HF tokenizers applies them. The
// tables (unicode_tables.cc) are generated from Python's unicodedata by gen_unicode_tables.py.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fluxserve::text {

// Strict UTF-8 (no overlongs, surrogates or values past U+10FFFF); the error names the byte offset.
absl::StatusOr<std::u32string> utf8_decode(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
std::string utf8_encode(std::u32string_view s);
// Invalid sequences replaced by U+FFFD, one per maximal invalid subpart (Rust from_utf8_lossy,
// which tokenizers' byte-level decoder uses).
std::string utf8_lossy(std::string_view bytes);

bool is_letter(char32_t cp);      // general category L*
bool is_number(char32_t cp);      // general category N*
bool is_whitespace(char32_t cp);  // Unicode White_Space (Oniguruma's \s, Rust char::is_whitespace)

// Canonical composition (NFC), as tokenizers' normalizers.NFC.
std::u32string nfc(std::u32string_view s);
// Full lowercase mapping of each code point on its own (Rust char::to_lowercase, as tokenizers'
// normalizers.Lowercase): no context rules, so a final capital sigma becomes σ, not ς.
std::u32string to_lower(std::u32string_view s);

const char* unicode_version();

namespace unicode_data {
struct Range {
  char32_t lo, hi;
};
struct LowerEntry {
  char32_t cp;
  char32_t lower[3];  // 0-terminated when shorter
};
struct CccRange {
  char32_t lo, hi;
  uint8_t ccc;
};
struct DecompEntry {
  char32_t cp, first, second;  // second == 0 for singletons
};
struct CompEntry {
  char32_t first, second, composite;
};
extern const char kUnicodeVersion[];
extern const Range kLetterRanges[];
extern const size_t kLetterRanges_size;
extern const Range kNumberRanges[];
extern const size_t kNumberRanges_size;
extern const LowerEntry kLowercase[];
extern const size_t kLowercase_size;
extern const CccRange kCombiningClass[];
extern const size_t kCombiningClass_size;
extern const DecompEntry kDecomposition[];
extern const size_t kDecomposition_size;
extern const CompEntry kComposition[];
extern const size_t kComposition_size;
}  // namespace unicode_data

}  // namespace fluxserve::text
