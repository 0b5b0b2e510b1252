// CLIP's byte-level BPE tokenizer (FLUX `tokenizer/`), matching transformers 5's CLIPTokenizer
// (a tokenizers-library pipeline; it never uses ftfy): `<|startoftext|>` / `<|endoftext|>` typed
// in the prompt are special tokens; other text -> NFC -> whitespace runs to " " -> lowercase ->
// CLIP's split regex -> UTF-8 bytes through GPT-2's byte-to-unicode map -> BPE by merge rank with
// "</w>" on the last symbol. encode() truncates to model_max_length - 2 tokens, adds bos/eos and
// right-pads with the pad token (<|endoftext|>), as diffusers' padding="max_length".
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/text/tokenized_prompt.h"

namespace fluxserve {

class ClipTokenizer {
 public:
  // Reads dir/vocab.json, dir/merges.txt and, when present, dir/tokenizer_config.json
  // (model_max_length, pad_token). Errors name the file (and line / key) at fault.
  static absl::StatusOr<std::unique_ptr<ClipTokenizer>> load(const std::string& dir);

  // model_max_length ids (77 for FLUX); fails only on text that is not valid UTF-8.
  absl::StatusOr<TokenizedPrompt> encode(std::string_view text) const;
  // Token ids of the text alone: no bos/eos, no truncation, no padding.
  absl::StatusOr<std::vector<int64_t>> tokenize(std::string_view text) const;
  // transformers' decode: byte-level back to text, "</w>" -> " ", trimmed; specials kept.
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t model_max_length() const { return model_max_length_; }
  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t vocab_size() const { return static_cast<int64_t>(vocab_.size()); }

 private:
  ClipTokenizer() = default;
  void bpe(const std::string& piece, std::vector<int64_t>& out) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::unordered_map<int64_t, std::string> id_to_token_;
  std::unordered_map<std::string, int> merge_rank_;  // key "left right"
  std::array<std::string, 256> byte_encoder_;        // byte -> UTF-8 of its unicode stand-in
  std::unordered_map<char32_t, uint8_t> byte_decoder_;
  int64_t model_max_length_ = 77;
  int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = 0;
};

}  // namespace fluxserve
