// `fluxserve eval transformer|scheduler`: run one component on tensors named like the diffusers
// forward arguments, so users can check their own checkpoints against diffusers.
#include <iostream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/io/safetensors.h"
#include "engine/models/flux_transformer.h"
#include "engine/pipeline/model_dir.h"
#include "engine/pipeline/scheduler.h"

namespace fluxserve::cli {
namespace {

constexpr const char* kEvalUsage = R"(usage:
  fluxserve eval transformer --model DIR --inputs in.safetensors --outputs out.safetensors [--threads N]
      inputs: hidden_states [B,Li,in_channels], encoder_hidden_states [B,Lt,joint_attention_dim],
              pooled_projections [B,pooled_projection_dim], timestep [B] (= t/1000),
              img_ids [Li,3], txt_ids [Lt,3], guidance [B] (only for guidance_embeds models)
      output: sample [B,Li,out_channels]
  fluxserve eval scheduler --model DIR --steps N --image-seq-len L --outputs out.safetensors
      output: sigmas [N+1], timesteps [N] (float32), as FluxPipeline sets them
DIR is a diffusers pipeline folder (model_index.json, transformer/, scheduler/) or the component
folder itself.
)";

absl::Status eval_transformer(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(std::string inputs_path, a.str("inputs"));
  FLUX_ASSIGN_OR_RETURN(std::string outputs_path, a.str("outputs"));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  set_threads(threads);
  FLUX_ASSIGN_OR_RETURN(std::string dir, find_component_dir(model, "transformer", "config.json",
                                                            "FluxTransformer2DModel"));
  FLUX_ASSIGN_OR_RETURN(auto transformer, FluxTransformer2DModel::load(dir));
  for (const std::string& k : transformer->unused_keys()) {
    std::cerr << "warning: " << dir << ": checkpoint key '" << k << "' is not used by the model\n";
  }
  FLUX_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(inputs_path));
  const std::set<std::string> known = {"hidden_states", "encoder_hidden_states",
                                       "pooled_projections", "timestep", "img_ids", "txt_ids",
                                       "guidance"};
  for (const SafetensorsEntry& e : file->entries()) {
    if (!known.contains(e.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          inputs_path, ": unexpected tensor '", e.name, "' (expected ",
          absl::StrJoin(known, ", "), ")"));
    }
  }
  FluxTransformerInputs in;
  FLUX_ASSIGN_OR_RETURN(in.hidden_states, file->get("hidden_states"));
  FLUX_ASSIGN_OR_RETURN(in.encoder_hidden_states, file->get("encoder_hidden_states"));
  FLUX_ASSIGN_OR_RETURN(in.pooled_projections, file->get("pooled_projections"));
  FLUX_ASSIGN_OR_RETURN(in.timestep, file->get("timestep"));
  FLUX_ASSIGN_OR_RETURN(in.img_ids, file->get("img_ids"));
  FLUX_ASSIGN_OR_RETURN(in.txt_ids, file->get("txt_ids"));
  if (file->find("guidance") != nullptr) {
    FLUX_ASSIGN_OR_RETURN(in.guidance, file->get("guidance"));
  }
  absl::StatusOr<Tensor> sample = transformer->forward(in);
  if (!sample.ok()) {
    return absl::Status(sample.status().code(),
                        absl::StrCat(inputs_path, ": ", sample.status().message()));
  }
  FLUX_RETURN_IF_ERROR(write_safetensors(outputs_path, {{"sample", *sample}},
                                         {{"producer", "fluxserve eval transformer"}}));
  std::cerr << "wrote sample " << sample->shape_str() << " to " << outputs_path << "\n";
  return absl::OkStatus();
}

absl::Status eval_scheduler(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(std::string outputs_path, a.str("outputs"));
  FLUX_ASSIGN_OR_RETURN(int64_t steps, a.required_int("steps"));
  FLUX_ASSIGN_OR_RETURN(int64_t seq_len, a.required_int("image-seq-len"));
  FLUX_ASSIGN_OR_RETURN(std::string dir,
                        find_component_dir(model, "scheduler", "scheduler_config.json",
                                           "FlowMatchEulerDiscreteScheduler"));
  FLUX_ASSIGN_OR_RETURN(auto scheduler, FlowMatchEulerDiscreteScheduler::load(dir));
  FLUX_RETURN_IF_ERROR(scheduler.set_timesteps(steps, seq_len));
  const auto& s = scheduler.sigmas();
  const auto& t = scheduler.timesteps();
  Tensor sigmas = Tensor::from_vector(s, {static_cast<int64_t>(s.size())});
  Tensor timesteps = Tensor::from_vector(t, {static_cast<int64_t>(t.size())});
  FLUX_RETURN_IF_ERROR(write_safetensors(outputs_path, {{"sigmas", sigmas}, {"timesteps", timesteps}},
                                         {{"producer", "fluxserve eval scheduler"}}));
  std::cerr << "wrote " << steps << "-step schedule for " << seq_len << " image tokens to "
            << outputs_path << "\n";
  return absl::OkStatus();
}

}  // namespace

int eval_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "help") {
    std::cout << kEvalUsage;
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "clip" || args[0] == "t5") return eval_text_main(args[0], rest);
  if (args[0] == "vae") return eval_vae_main(rest);
  if (args[0] == "tokenize") return eval_tokenize_main(rest);
  absl::Status st;
  if (args[0] == "transformer") {
    auto a = Args::parse(rest, {"model", "inputs", "outputs", "threads"});
    st = a.ok() ? eval_transformer(*a) : a.status();
  } else if (args[0] == "scheduler") {
    auto a = Args::parse(rest, {"model", "steps", "image-seq-len", "outputs"});
    st = a.ok() ? eval_scheduler(*a) : a.status();
  } else {
    std::cerr << "fluxserve eval: unknown component '" << args[0] << "'\n" << kEvalUsage;
    return 2;
  }
  if (!st.ok()) {
    std::cerr << "fluxserve eval " << args[0] << ": " << st.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
