#include "engine/text/unicode.h"

#include <algorithm>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fluxserve::text {
namespace {

using namespace unicode_data;  // NOLINT(build/namespaces): generated table names

bool in_ranges(const Range* r, size_t n, char32_t cp) {
  const Range* end = r + n;
  const Range* it =
      std::upper_bound(r, end, cp, [](char32_t c, const Range& x) { return c < x.lo; });
  return it != r && cp <= (it - 1)->hi;
}

uint8_t ccc(char32_t cp) {
  if (cp < 0x300) return 0;
  const CccRange* end = kCombiningClass + kCombiningClass_size;
  const CccRange* it = std::upper_bound(kCombiningClass, end, cp,
                                        [](char32_t c, const CccRange& x) { return c < x.lo; });
  return (it != kCombiningClass && cp <= (it - 1)->hi) ? (it - 1)->ccc : 0;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

void decompose(char32_t cp, std::u32string& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const DecompEntry* end = kDecomposition + kDecomposition_size;
  const DecompEntry* it = std::lower_bound(
      kDecomposition, end, cp, [](const DecompEntry& x, char32_t c) { return x.cp < c; });
  if (it == end || it->cp != cp) {
    out.push_back(cp);
    return;
  }
  decompose(it->first, out);
  if (it->second != 0) decompose(it->second, out);
}

// 0 when the pair has no primary composite.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const CompEntry* end = kComposition + kComposition_size;
  const CompEntry* it =
      std::lower_bound(kComposition, end, std::pair{a, b}, [](const CompEntry& x, auto key) {
        return x.first != key.first ? x.first < key.first : x.second < key.second;
      });
  return (it != end && it->first == a && it->second == b) ? it->composite : 0;
}

}  // namespace

absl::StatusOr<std::u32string> utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = 0;
    char32_t cp = 0, min = 0;
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    }
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (!ok || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return absl::InvalidArgumentError(
          absl::StrCat("text is not valid UTF-8 (byte offset ", i, ")"));
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) append_utf8(out, cp);
  return out;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(static_cast<char>(b0));
      ++i;
      continue;
    }
    // Unicode Table 3-7: allowed range of the second byte depends on the first.
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    }
    size_t k = 1;
    if (len > 0) {
      while (k < static_cast<size_t>(len) && i + k < s.size()) {
        const auto b = static_cast<unsigned char>(s[i + k]);
        const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) break;
        ++k;
      }
    }
    if (len > 0 && k == static_cast<size_t>(len)) {
      out.append(s.substr(i, k));
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
    }
    i += k;
  }
  return out;
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(kLetterRanges, kLetterRanges_size, cp);
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(kNumberRanges, kNumberRanges_size, cp);
}

bool is_whitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

std::u32string nfc(std::u32string_view s) {
  // Below U+0300 nothing decomposes into something that composes differently: NFC is identity.
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x300; }))
    return std::u32string(s);
  std::u32string d;
  d.reserve(s.size() + 8);
  for (char32_t cp : s) decompose(cp, d);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // Canonical composition (UAX #15): each character composes with the last starter unless blocked.
  std::u32string out;
  out.reserve(d.size());
  size_t starter = std::u32string::npos;
  int last_ccc = -1;
  for (char32_t cp : d) {
    const int c = ccc(cp);
    if (starter != std::u32string::npos) {
      const bool blocked =
          !out.empty() && out.size() - 1 != starter && (last_ccc == 0 || last_ccc >= c);
      if (!blocked) {
        if (char32_t comp = compose(out[starter], cp); comp != 0) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (c == 0) {
      starter = out.size();
      last_ccc = -1;
    } else {
      last_ccc = c;
    }
    out.push_back(cp);
  }
  return out;
}

std::u32string to_lower(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t cp : s) {
    if (cp < 0x80) {
      out.push_back((cp >= 'A' && cp <= 'Z') ? cp + 32 : cp);
      continue;
    }
    const LowerEntry* end = kLowercase + kLowercase_size;
    const LowerEntry* it = std::lower_bound(
        kLowercase, end, cp, [](const LowerEntry& x, char32_t c) { return x.cp < c; });
    if (it == end || it->cp != cp) {
      out.push_back(cp);
      continue;
    }
    for (char32_t l : it->lower)
      if (l != 0) out.push_back(l);
  }
  return out;
}

const char* unicode_version() { return unicode_data::kUnicodeVersion; }

}  // namespace fluxserve::text
