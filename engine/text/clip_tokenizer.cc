#include "engine/text/clip_tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json_util.h"
#include "engine/text/unicode.h"

namespace fluxserve {
namespace {

using namespace text;  // NOLINT(build/namespaces): utf8 / unicode helpers

namespace fs = std::filesystem;

constexpr std::u32string_view kBos = U"<|startoftext|>";
constexpr std::u32string_view kEos = U"<|endoftext|>";

absl::StatusOr<std::string> read_text_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int e = errno;
    if (e == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::UnavailableError(absl::StrCat(path, ": cannot open: ", std::strerror(e)));
  }
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::UnavailableError(absl::StrCat(path, ": read failed"));
  return out;
}

// GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the other 68
// bytes map to U+0100.. in byte order.
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> table{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = direct[b] ? static_cast<char32_t>(b) : next++;
  return table;
}

bool starts_with_at(const std::u32string& s, size_t i, std::u32string_view p) {
  return s.size() - i >= p.size() && std::u32string_view(s).substr(i, p.size()) == p;
}

// CLIP's split regex on normalised (lowercased) text, keeping the matches:
//   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// followed by the ByteLevel pre-tokenizer's GPT-2 regex. That second split only changes the two
// literal special strings (they reach here when typed in another case, e.g. "<|ENDOFTEXT|>"),
// which it cuts into "<|", the word, "|>".
std::vector<std::u32string> split_words(const std::u32string& s) {
  static constexpr std::u32string_view kContractions[] = {U"'s", U"'t",  U"'re", U"'ve",
                                                          U"'m", U"'ll", U"'d"};
  std::vector<std::u32string> words;
  size_t i = 0;
  while (i < s.size()) {
    bool matched = false;
    for (std::u32string_view special : {kBos, kEos}) {
      if (starts_with_at(s, i, special)) {
        words.emplace_back(special.substr(0, 2));
        words.emplace_back(special.substr(2, special.size() - 4));
        words.emplace_back(special.substr(special.size() - 2));
        i += special.size();
        matched = true;
        break;
      }
    }
    if (matched) continue;
    for (std::u32string_view c : kContractions) {
      if (starts_with_at(s, i, c)) {
        words.emplace_back(c);
        i += c.size();
        matched = true;
        break;
      }
    }
    if (matched) continue;
    const char32_t c = s[i];
    size_t j = i + 1;
    if (is_letter(c)) {
      while (j < s.size() && is_letter(s[j])) ++j;
    } else if (is_number(c)) {
      // a single code point
    } else if (!is_whitespace(c)) {
      while (j < s.size() && !is_whitespace(s[j]) && !is_letter(s[j]) && !is_number(s[j])) ++j;
    } else {
      ++i;  // whitespace is not part of any match
      continue;
    }
    words.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return words;
}

// tokenizers' normalizer: NFC, every \s+ run -> " ", lowercase.
std::u32string normalize(std::u32string_view text) {
  const std::u32string n = nfc(text);
  std::u32string collapsed;
  collapsed.reserve(n.size());
  for (size_t i = 0; i < n.size();) {
    if (is_whitespace(n[i])) {
      collapsed.push_back(U' ');
      while (i < n.size() && is_whitespace(n[i])) ++i;
    } else {
      collapsed.push_back(n[i++]);
    }
  }
  return to_lower(collapsed);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClipTokenizer>> ClipTokenizer::load(const std::string& dir) {
  auto owned = std::unique_ptr<ClipTokenizer>(new ClipTokenizer());
  ClipTokenizer& tok = *owned;
  const auto table = bytes_to_unicode();
  for (int b = 0; b < 256; ++b) {
    tok.byte_encoder_[b].clear();
    append_utf8(tok.byte_encoder_[b], table[b]);
    tok.byte_decoder_[table[b]] = static_cast<uint8_t>(b);
  }

  std::string vocab_path = (fs::path(dir) / "vocab.json").string();
  const std::string merges_path = (fs::path(dir) / "merges.txt").string();
  const std::string tokenizer_json = (fs::path(dir) / "tokenizer.json").string();
  std::error_code ec;
  // transformers 5's save_pretrained writes only tokenizer.json: read vocab and merges from it.
  std::vector<std::string> merge_lines;
  std::string merges_where = merges_path;
  nlohmann::json vocab;
  if (!fs::exists(vocab_path, ec) && fs::exists(tokenizer_json, ec)) {
    FLUX_ASSIGN_OR_RETURN(nlohmann::json tj, read_json_file(tokenizer_json));
    const nlohmann::json* model = tj.is_object() && tj.contains("model") ? &tj["model"] : nullptr;
    if (model == nullptr || !model->is_object() || !model->contains("type") || (*model)["type"] != "BPE" ||
        !model->contains("vocab") || !model->contains("merges") || !(*model)["merges"].is_array())
      return absl::InvalidArgumentError(
          absl::StrCat(tokenizer_json, ": expected a BPE model with vocab and merges"));
    vocab = (*model)["vocab"];
    vocab_path = tokenizer_json;
    merges_where = tokenizer_json;
    for (const auto& m : (*model)["merges"]) {
      if (m.is_string()) {
        merge_lines.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merge_lines.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            tokenizer_json, ": merge ", merge_lines.size() + 1, " is not a pair of strings"));
      }
    }
  } else {
    FLUX_ASSIGN_OR_RETURN(vocab, read_json_file(vocab_path));
    FLUX_ASSIGN_OR_RETURN(std::string merges, read_text_file(merges_path));
    size_t pos = 0;
    while (pos < merges.size()) {
      size_t end = merges.find('\n', pos);
      if (end == std::string::npos) end = merges.size();
      merge_lines.push_back(merges.substr(pos, end - pos));
      pos = end + 1;
    }
  }
  if (!vocab.is_object() || vocab.empty())
    return absl::InvalidArgumentError(
        absl::StrCat(vocab_path, ": must be a non-empty JSON object of token -> id, got ",
                     json_type_name(vocab)));
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > std::numeric_limits<int32_t>::max())
      return absl::InvalidArgumentError(absl::StrCat(vocab_path, ": token \"", it.key(),
                                                     "\" must map to a non-negative integer id"));
    const int64_t id = it.value().get<int64_t>();
    if (!tok.id_to_token_.emplace(id, it.key()).second)
      return absl::InvalidArgumentError(absl::StrCat(vocab_path, ": id ", id, " is used by both \"",
                                                     tok.id_to_token_[id], "\" and \"", it.key(),
                                                     "\""));
    tok.vocab_.emplace(it.key(), id);
  }

  int line_no = 0, rank = 0;
  for (std::string line : merge_lines) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#version", 0) == 0) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size() ||
        line.find(' ', sp + 1) != std::string::npos)
      return absl::InvalidArgumentError(absl::StrCat(
          merges_where, ": line ", line_no, ": expected two tokens separated by one space, got \"",
          line.substr(0, 80), "\""));
    const std::string left = line.substr(0, sp), right = line.substr(sp + 1);
    for (const std::string& t : {left, right, left + right}) {
      if (!tok.vocab_.contains(t))
        return absl::InvalidArgumentError(absl::StrCat(
            merges_where, ": line ", line_no, ": token \"", t, "\" is not in the vocabulary"));
    }
    tok.merge_rank_.emplace(line, rank++);  // first occurrence wins
  }

  std::string pad_token = "<|endoftext|>";
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (fs::exists(config_path)) {
    FLUX_ASSIGN_OR_RETURN(nlohmann::json config, read_json_file(config_path));
    if (!config.is_object())
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": must be a JSON object"));
    ConfigReader reader(config, config_path);
    FLUX_ASSIGN_OR_RETURN(tok.model_max_length_, reader.get_int("model_max_length", 77));
    if (tok.model_max_length_ < 2 || tok.model_max_length_ > 1'000'000)
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": model_max_length ",
                                                     tok.model_max_length_,
                                                     " is out of range [2, 1000000]"));
    if (auto p = config.find("pad_token"); p != config.end()) {
      if (p->is_string()) {
        pad_token = p->get<std::string>();
      } else if (p->is_object() && p->contains("content") && (*p)["content"].is_string()) {
        pad_token = (*p)["content"].get<std::string>();
      } else if (!p->is_null()) {
        return absl::InvalidArgumentError(
            absl::StrCat(config_path, ": pad_token must be a string"));
      }
    }
  }

  auto special_id = [&](const std::string& token,
                        const std::string& where) -> absl::StatusOr<int64_t> {
    auto it = tok.vocab_.find(token);
    if (it == tok.vocab_.end())
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": special token \"", token, "\" is not in the vocabulary"));
    return it->second;
  };
  FLUX_ASSIGN_OR_RETURN(tok.bos_id_, special_id("<|startoftext|>", vocab_path));
  FLUX_ASSIGN_OR_RETURN(tok.eos_id_, special_id("<|endoftext|>", vocab_path));
  FLUX_ASSIGN_OR_RETURN(tok.pad_id_, special_id(pad_token, config_path));
  tok.unk_id_ = tok.eos_id_;  // CLIPTokenizer's unk_token is <|endoftext|>
  return owned;
}

void ClipTokenizer::bpe(const std::string& piece, std::vector<int64_t>& out) const {
  // Symbols: the byte-level stand-in of each byte, "</w>" on the last one.
  std::vector<std::string> symbols;
  symbols.reserve(piece.size());
  for (unsigned char b : piece) symbols.push_back(byte_encoder_[b]);
  if (symbols.empty()) return;
  symbols.back() += "</w>";
  // Merge the lowest-ranked adjacent pair, the leftmost one on ties (tokenizers' BPE::merge_all).
  std::string key;
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      key.assign(symbols[i]).append(" ").append(symbols[i + 1]);
      auto it = merge_rank_.find(key);
      if (it != merge_rank_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  for (const std::string& s : symbols) {
    auto it = vocab_.find(s);
    out.push_back(it == vocab_.end() ? unk_id_ : it->second);
  }
}

absl::StatusOr<std::vector<int64_t>> ClipTokenizer::tokenize(std::string_view text) const {
  FLUX_ASSIGN_OR_RETURN(std::u32string u, utf8_decode(text));
  std::vector<int64_t> ids;
  auto encode_segment = [&](std::u32string_view seg) {
    if (seg.empty()) return;
    for (const std::u32string& word : split_words(normalize(seg))) bpe(utf8_encode(word), ids);
  };
  // The special tokens are matched on the raw text first (tokenizers' added vocabulary).
  size_t start = 0, i = 0;
  while (i < u.size()) {
    std::u32string_view hit;
    if (starts_with_at(u, i, kBos)) hit = kBos;
    if (starts_with_at(u, i, kEos)) hit = kEos;
    if (hit.empty()) {
      ++i;
      continue;
    }
    encode_segment(std::u32string_view(u).substr(start, i - start));
    ids.push_back(hit == kBos ? bos_id_ : eos_id_);
    i += hit.size();
    start = i;
  }
  encode_segment(std::u32string_view(u).substr(start));
  return ids;
}

absl::StatusOr<TokenizedPrompt> ClipTokenizer::encode(std::string_view text) const {
  FLUX_ASSIGN_OR_RETURN(std::vector<int64_t> content, tokenize(text));
  const size_t keep = static_cast<size_t>(model_max_length_ - 2);
  TokenizedPrompt out;
  out.untruncated_length = static_cast<int64_t>(content.size()) + 2;
  if (content.size() > keep)
    out.truncated_text = decode(
        std::vector<int64_t>(content.begin() + static_cast<std::ptrdiff_t>(keep), content.end()));
  out.ids.reserve(static_cast<size_t>(model_max_length_));
  out.ids.push_back(bos_id_);
  out.ids.insert(out.ids.end(), content.begin(),
                 content.begin() + static_cast<std::ptrdiff_t>(std::min(keep, content.size())));
  out.ids.push_back(eos_id_);
  out.ids.resize(static_cast<size_t>(model_max_length_), pad_id_);
  return out;
}

std::string ClipTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string joined;
  for (int64_t id : ids) {
    auto it = id_to_token_.find(id);
    if (it != id_to_token_.end()) joined += it->second;
  }
  // Byte-level decode: each stand-in code point back to its byte ("</w>" is plain ASCII).
  std::string bytes;
  auto u = utf8_decode(joined);
  if (u.ok()) {
    for (char32_t c : *u) {
      auto it = byte_decoder_.find(c);
      if (it != byte_decoder_.end()) {
        bytes.push_back(static_cast<char>(it->second));
      } else {
        append_utf8(bytes, c);
      }
    }
  }
  bytes = utf8_lossy(bytes);
  std::string text;
  for (size_t i = 0; i < bytes.size();) {
    if (bytes.compare(i, 4, "</w>") == 0) {
      text.push_back(' ');
      i += 4;
    } else {
      text.push_back(bytes[i++]);
    }
  }
  const size_t b = text.find_first_not_of(' ');
  if (b == std::string::npos) return {};
  return text.substr(b, text.find_last_not_of(' ') - b + 1);
}

}  // namespace fluxserve
