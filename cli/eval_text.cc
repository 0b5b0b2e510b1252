// `fluxserve eval clip|t5`: run a text encoder on token ids, writing the tensors transformers
// returns, so users can check their own checkpoints against CLIPTextModel / T5EncoderModel.
#include <iostream>
#include <set>

#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/io/safetensors.h"
#include "engine/models/clip_text.h"
#include "engine/models/t5_encoder.h"
#include "engine/pipeline/model_dir.h"

namespace fluxserve::cli {
namespace {

constexpr const char* kEvalTextUsage = R"(usage:
  fluxserve eval clip --model DIR --inputs in.safetensors --outputs out.safetensors [--threads N]
      input:   input_ids [B,L] int64 or int32 (L <= max_position_embeddings)
      outputs: last_hidden_state [B,L,hidden_size], pooler_output [B,hidden_size] (float32)
  fluxserve eval t5 --model DIR --inputs in.safetensors --outputs out.safetensors [--threads N]
      input:   input_ids [B,L] int64 or int32
      output:  last_hidden_state [B,L,d_model] (float32)
DIR is a diffusers pipeline folder (text_encoder/ holds CLIP, text_encoder_2/ holds T5) or the
component folder itself.
)";

// The single `input_ids` tensor of the inputs file; anything else in it is an error.
absl::StatusOr<Tensor> read_input_ids(const std::string& path) {
  FLUX_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(path));
  for (const SafetensorsEntry& e : file->entries()) {
    if (e.name != "input_ids") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": unexpected tensor '", e.name, "' (expected input_ids)"));
    }
  }
  return file->get("input_ids");
}

void warn_unused(const std::string& dir, const std::vector<std::string>& keys) {
  for (const std::string& k : keys) {
    std::cerr << "warning: " << dir << ": checkpoint key '" << k << "' is not used by the model\n";
  }
}

// Prefixes a forward-pass error with the inputs file it came from.
absl::Status with_file(const std::string& path, const absl::Status& st) {
  return absl::Status(st.code(), absl::StrCat(path, ": ", st.message()));
}

absl::Status eval_text(const std::string& component, const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(std::string inputs_path, a.str("inputs"));
  FLUX_ASSIGN_OR_RETURN(std::string outputs_path, a.str("outputs"));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  set_threads(threads);
  const bool clip = component == "clip";
  FLUX_ASSIGN_OR_RETURN(
      std::string dir,
      find_component_dir(model, clip ? "text_encoder" : "text_encoder_2", "config.json",
                         clip ? "CLIPTextModel" : "T5EncoderModel"));
  FLUX_ASSIGN_OR_RETURN(Tensor ids, read_input_ids(inputs_path));
  const std::map<std::string, std::string> meta = {
      {"producer", absl::StrCat("fluxserve eval ", component)}};
  if (clip) {
    FLUX_ASSIGN_OR_RETURN(auto encoder, CLIPTextModel::load(dir));
    warn_unused(dir, encoder->unused_keys());
    absl::StatusOr<CLIPTextOutput> out = encoder->forward(ids);
    if (!out.ok()) return with_file(inputs_path, out.status());
    FLUX_RETURN_IF_ERROR(write_safetensors(
        outputs_path,
        {{"last_hidden_state", out->last_hidden_state}, {"pooler_output", out->pooler_output}},
        meta));
    std::cerr << "wrote last_hidden_state " << out->last_hidden_state.shape_str()
              << " and pooler_output " << out->pooler_output.shape_str() << " to " << outputs_path
              << "\n";
  } else {
    FLUX_ASSIGN_OR_RETURN(auto encoder, T5EncoderModel::load(dir));
    warn_unused(dir, encoder->unused_keys());
    absl::StatusOr<Tensor> last = encoder->forward(ids);
    if (!last.ok()) return with_file(inputs_path, last.status());
    FLUX_RETURN_IF_ERROR(write_safetensors(outputs_path, {{"last_hidden_state", *last}}, meta));
    std::cerr << "wrote last_hidden_state " << last->shape_str() << " to " << outputs_path << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int eval_text_main(const std::string& component, const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "help") {
    std::cout << kEvalTextUsage;
    return args.empty() ? 2 : 0;
  }
  if (component != "clip" && component != "t5") {
    std::cerr << "fluxserve eval: unknown text encoder '" << component << "'\n" << kEvalTextUsage;
    return 2;
  }
  auto a = Args::parse(args, {"model", "inputs", "outputs", "threads"});
  const absl::Status st = a.ok() ? eval_text(component, *a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve eval " << component << ": " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
