// `fluxserve eval tokenize`: the prompt's input ids for CLIP (tokenizer/) and T5 (tokenizer_2/),
// as FluxPipeline.encode_prompt makes them, so tokenization can be checked against transformers.
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/core/tensor.h"
#include "engine/io/safetensors.h"
#include "engine/text/clip_tokenizer.h"
#include "engine/text/t5_tokenizer.h"

namespace fluxserve::cli {
namespace {

constexpr const char* kUsage = R"(usage:
  fluxserve eval tokenize --model DIR --prompt TEXT [--prompt-2 TEXT] [--max-sequence-length 512]
                          --outputs out.safetensors
      DIR: a diffusers pipeline folder with tokenizer/ (CLIP) and tokenizer_2/ (T5)
      outputs: input_ids_clip [1,77], input_ids_t5 [1,max_sequence_length] (int64)
      --prompt-2 (T5's prompt) defaults to --prompt, as in FluxPipeline.
)";

Tensor ids_tensor(const std::vector<int64_t>& ids) {
  Tensor t = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::kI64);
  std::copy(ids.begin(), ids.end(), t.data<int64_t>());
  return t;
}

absl::Status run(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(std::string prompt, a.str("prompt"));
  const std::string prompt_2 = a.str_or("prompt-2", prompt);
  FLUX_ASSIGN_OR_RETURN(int64_t max_seq, a.int_or("max-sequence-length", 512));
  FLUX_ASSIGN_OR_RETURN(std::string outputs_path, a.str("outputs"));
  // FluxPipeline.check_inputs rejects more than 512.
  if (max_seq < 1 || max_seq > 512)
    return absl::InvalidArgumentError(
        absl::StrCat("--max-sequence-length must be in [1, 512], got ", max_seq));
  std::error_code ec;
  if (!std::filesystem::is_directory(model, ec))
    return absl::NotFoundError(absl::StrCat("model directory '", model, "' does not exist"));

  const auto root = std::filesystem::path(model);
  FLUX_ASSIGN_OR_RETURN(auto clip, ClipTokenizer::load((root / "tokenizer").string()));
  FLUX_ASSIGN_OR_RETURN(auto t5, T5Tokenizer::load((root / "tokenizer_2").string()));
  FLUX_ASSIGN_OR_RETURN(TokenizedPrompt clip_ids, clip->encode(prompt));
  FLUX_ASSIGN_OR_RETURN(TokenizedPrompt t5_ids, t5->encode(prompt_2, max_seq));
  // diffusers' wording (FluxPipeline._get_clip_prompt_embeds / _get_t5_prompt_embeds).
  if (clip_ids.truncated()) {
    std::cerr
        << "warning: The following part of your input was truncated because CLIP can only handle "
           "sequences up to "
        << clip->model_max_length() << " tokens: " << clip_ids.truncated_text << "\n";
  }
  if (t5_ids.truncated()) {
    std::cerr
        << "warning: The following part of your input was truncated because `max_sequence_length` "
           "is set to  "
        << max_seq << " tokens: " << t5_ids.truncated_text << "\n";
  }
  FLUX_RETURN_IF_ERROR(write_safetensors(
      outputs_path,
      {{"input_ids_clip", ids_tensor(clip_ids.ids)}, {"input_ids_t5", ids_tensor(t5_ids.ids)}},
      {{"producer", "fluxserve eval tokenize"}}));
  std::cerr << "wrote input_ids_clip [1," << clip_ids.ids.size() << "] and input_ids_t5 [1,"
            << t5_ids.ids.size() << "] to " << outputs_path << "\n";
  return absl::OkStatus();
}

}  // namespace

int eval_tokenize_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kUsage;
    return 0;
  }
  auto a = Args::parse(args, {"model", "prompt", "prompt-2", "max-sequence-length", "outputs"});
  const absl::Status st = a.ok() ? run(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve eval tokenize: " << st.message() << "\n";
    if (!a.ok()) std::cerr << kUsage;
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
