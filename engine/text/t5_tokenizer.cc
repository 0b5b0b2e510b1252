#include "engine/text/t5_tokenizer.h"

#include <algorithm>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/status.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json_util.h"
#include "engine/text/unicode.h"

namespace fluxserve {
namespace fs = std::filesystem;
using text::is_whitespace;
using text::SpmModel;
using text::utf8_decode;
using text::utf8_encode;

absl::StatusOr<std::unique_ptr<T5Tokenizer>> T5Tokenizer::load(const std::string& dir) {
  auto owned = std::unique_ptr<T5Tokenizer>(new T5Tokenizer());
  T5Tokenizer& tok = *owned;
  const std::string model_path = (fs::path(dir) / "spiece.model").string();
  std::error_code ec;
  if (!fs::is_regular_file(model_path, ec))
    return absl::NotFoundError(absl::StrCat(model_path, ": no such file"));
  std::string error;
  std::unique_ptr<SpmModel> sp = SpmModel::load(model_path, &error);
  if (sp == nullptr)
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": not a readable SentencePiece model: ", error));
  if (sp->piece_size() < 3)
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": has only ", sp->piece_size(), " pieces"));

  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (fs::exists(config_path)) {
    FLUX_ASSIGN_OR_RETURN(nlohmann::json config, read_json_file(config_path));
    if (!config.is_object())
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": must be a JSON object"));
    ConfigReader reader(config, config_path);
    FLUX_ASSIGN_OR_RETURN(tok.model_max_length_, reader.get_int("model_max_length", 512));
    FLUX_ASSIGN_OR_RETURN(tok.extra_ids_, reader.get_int("extra_ids", 100));
    if (tok.extra_ids_ < 0 || tok.extra_ids_ > 100000)
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": extra_ids ", tok.extra_ids_,
                                                     " is out of range [0, 100000]"));
  }

  // T5's fixed special pieces: <pad>=0, </s>=1, <unk>=2 in the real and the tiny model.
  for (auto [piece, slot] : {std::pair<const char*, int64_t*>{"<pad>", &tok.pad_id_},
                             {"</s>", &tok.eos_id_},
                             {"<unk>", &tok.unk_id_}}) {
    const int id = sp->piece_to_id(piece);
    if (sp->id_to_piece(id) != piece)
      return absl::InvalidArgumentError(absl::StrCat(model_path, ": has no \"", piece, "\" piece"));
    *slot = id;
    tok.specials_.emplace_back(piece, id);
  }
  const int64_t n = sp->piece_size();
  for (int64_t i = 0; i < tok.extra_ids_; ++i)
    tok.specials_.emplace_back(absl::StrCat("<extra_id_", i, ">"), n + tok.extra_ids_ - 1 - i);
  std::stable_sort(tok.specials_.begin(), tok.specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  // Which White_Space code points does the charsmap delete? Probe "a<c>b" against "ab".
  std::vector<int> plain, probe;
  if (sp->encode("ab", &plain, &error)) {
    for (char32_t c = 0; c <= 0x3000; ++c) {
      if (!is_whitespace(c) || c == U' ') continue;
      if (sp->encode(utf8_encode(std::u32string{U'a', c, U'b'}), &probe, &error) && probe == plain)
        tok.model_deletes_.push_back(c);
    }
  }
  tok.sp_ = std::move(sp);
  return owned;
}

int64_t T5Tokenizer::vocab_size() const { return sp_->piece_size() + extra_ids_; }

absl::StatusOr<std::vector<int64_t>> T5Tokenizer::tokenize(std::string_view text) const {
  std::vector<int64_t> ids;
  auto encode_segment = [&](std::string_view seg) -> absl::Status {
    if (seg.empty()) return absl::OkStatus();
    FLUX_ASSIGN_OR_RETURN(std::u32string u, utf8_decode(seg));
    // T5TokenizerFast applies the model's charsmap, then splits on every Unicode White_Space
    // (WhitespaceSplit); sentencepiece splits only on what its charsmap turns into " " (it keeps
    // e.g. U+0085). Making White_Space " " first gives both the same words, except for the code
    // points the charsmap deletes (U+000B with nmt_nfkc), which must stay for it to delete.
    for (char32_t& c : u)
      if (is_whitespace(c) && model_deletes_.find(c) == std::u32string::npos) c = U' ';
    std::vector<int> piece_ids;
    std::string error;
    if (!sp_->encode(utf8_encode(u), &piece_ids, &error))
      return absl::InternalError(absl::StrCat("sentencepiece encode failed: ", error));
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    return absl::OkStatus();
  };
  // Special tokens are matched on the raw text first, leftmost then longest (HF added vocabulary).
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const std::pair<std::string, int64_t>* hit = nullptr;
    if (text[i] == '<') {
      for (const auto& s : specials_) {
        if (text.substr(i, s.first.size()) == s.first) {
          hit = &s;
          break;
        }
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    FLUX_RETURN_IF_ERROR(encode_segment(text.substr(start, i - start)));
    ids.push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  FLUX_RETURN_IF_ERROR(encode_segment(text.substr(start)));
  return ids;
}

absl::StatusOr<TokenizedPrompt> T5Tokenizer::encode(std::string_view text,
                                                    int64_t max_length) const {
  if (max_length < 1 || max_length > 1'000'000)
    return absl::InvalidArgumentError(
        absl::StrCat("T5 max_length ", max_length, " is out of range [1, 1000000]"));
  FLUX_ASSIGN_OR_RETURN(std::vector<int64_t> content, tokenize(text));
  const size_t keep = static_cast<size_t>(max_length - 1);
  TokenizedPrompt out;
  out.untruncated_length = static_cast<int64_t>(content.size()) + 1;
  if (content.size() > keep)
    out.truncated_text = decode(
        std::vector<int64_t>(content.begin() + static_cast<std::ptrdiff_t>(keep), content.end()));
  out.ids.assign(content.begin(),
                 content.begin() + static_cast<std::ptrdiff_t>(std::min(keep, content.size())));
  out.ids.push_back(eos_id_);
  out.ids.resize(static_cast<size_t>(max_length), pad_id_);
  return out;
}

std::string T5Tokenizer::decode(const std::vector<int64_t>& ids) const {
  // tokenizers' Metaspace decoder: pieces concatenated, "▁" -> " ", one leading space dropped.
  // Specials (and <unk>) are written as their text, as transformers' decode does by default.
  std::string text;
  for (int64_t id : ids) {
    const std::string* special = nullptr;
    for (const auto& s : specials_) {
      if (s.second == id) special = &s.first;
    }
    if (special != nullptr) {
      text += *special;
    } else if (id >= 0 && id < sp_->piece_size()) {
      const std::string piece = sp_->id_to_piece(static_cast<int>(id));
      for (size_t i = 0; i < piece.size();) {
        if (piece.compare(i, 3, "\xe2\x96\x81") == 0) {
          text += ' ';
          i += 3;
        } else {
          text += piece[i++];
        }
      }
    }
  }
  if (!text.empty() && text[0] == ' ') text.erase(0, 1);
  return text;
}

}  // namespace fluxserve
