// What a tokenizer hands the pipeline for one prompt: the model's input ids at their fixed length
// (specials included, truncated and right-padded exactly like transformers with
// padding="max_length", truncation=True), and enough to warn like diffusers when text was cut.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fluxserve {

struct TokenizedPrompt {
  // Exactly max_length ids (CLIP: 77; T5: max_sequence_length).
  std::vector<int64_t> ids;
  // Tokens the prompt needs without truncation, specials included (diffusers' untruncated_ids
  // with padding="longest"). Greater than ids.size() exactly when the prompt was truncated.
  int64_t untruncated_length = 0;
  // The dropped tokens decoded to text, for diffusers' warning "The following part of your input
  // was truncated ...: <text>". Empty when nothing was dropped.
  std::string truncated_text;

  bool truncated() const { return untruncated_length > static_cast<int64_t>(ids.size()); }
};

}  // namespace fluxserve
