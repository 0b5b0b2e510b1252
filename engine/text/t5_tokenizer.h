// T5's SentencePiece unigram tokenizer (FLUX `tokenizer_2/`), matching transformers 5's
// T5TokenizerFast, which diffusers loads for it: `<pad>`, `</s>`, `<unk>` and `<extra_id_N>`
// typed in the prompt are special tokens; the text between them goes through spiece.model
// (libsentencepiece: its charsmap normalisation, whitespace collapsing, "▁" prefixes, Viterbi).
// encode() appends `</s>`, keeps max_length - 1 pieces + `</s>` and right-pads with `<pad>` (0).
//
// Known difference: HF normalises by grapheme cluster, sentencepiece by code point, so a
// combining mark right after a non-ASCII space or a compatibility character (e.g. "①\u0308",
// "\u00a0\u0308") can tokenize differently. See engine/text/README.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/spm_model.h"
#include "engine/text/tokenized_prompt.h"

namespace fluxserve {

class T5Tokenizer {
 public:
  // Reads dir/spiece.model and, when present, dir/tokenizer_config.json (model_max_length,
  // extra_ids). Errors name the file at fault.
  static absl::StatusOr<std::unique_ptr<T5Tokenizer>> load(const std::string& dir);

  // max_length ids; InvalidArgument for max_length < 1 or text that is not valid UTF-8.
  absl::StatusOr<TokenizedPrompt> encode(std::string_view text, int64_t max_length) const;
  // Token ids of the text alone: no `</s>`, no truncation, no padding.
  absl::StatusOr<std::vector<int64_t>> tokenize(std::string_view text) const;
  // Text of the ids (sentencepiece's decode; specials written as their text).
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t model_max_length() const { return model_max_length_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  // sentencepiece pieces + extra ids (len(tokenizer) in transformers).
  int64_t vocab_size() const;
  // <extra_id_N> has id vocab_size() - 1 - N.
  int64_t extra_ids() const { return extra_ids_; }

 private:
  T5Tokenizer() = default;
  std::unique_ptr<const text::SpmModel> sp_;
  std::vector<std::pair<std::string, int64_t>> specials_;  // longest first
  std::u32string model_deletes_;  // White_Space code points the model's charsmap removes (e.g. VT)
  int64_t model_max_length_ = 512;
  int64_t extra_ids_ = 100;
  int64_t pad_id_ = 0, eos_id_ = 1, unk_id_ = 2;
};

}  // namespace fluxserve
