// `fluxserve eval vae`: run the AutoencoderKL decoder on latents as `vae.decode(latents).sample`
// does, so users can check their own VAE checkpoints against diffusers.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "engine/core/status.h"
#include "engine/io/safetensors.h"
#include "engine/models/vae_decoder.h"
#include "engine/pipeline/model_dir.h"

namespace fluxserve::cli {
namespace {

constexpr const char* kEvalVaeUsage = R"(usage:
  fluxserve eval vae --model DIR --inputs in.safetensors --outputs out.safetensors [--threads N]
      inputs: latents [B,latent_channels,h,w], already scaled as vae.decode receives them
              (latents / scaling_factor + shift_factor)
      output: sample [B,out_channels,8h,8w] (float32, before the [-1,1] -> uint8 postprocess)
DIR is a diffusers pipeline folder (model_index.json, vae/) or the vae folder itself.
)";

absl::Status eval_vae(const Args& a) {
  FLUX_ASSIGN_OR_RETURN(std::string model, a.str("model"));
  FLUX_ASSIGN_OR_RETURN(std::string inputs_path, a.str("inputs"));
  FLUX_ASSIGN_OR_RETURN(std::string outputs_path, a.str("outputs"));
  FLUX_ASSIGN_OR_RETURN(int64_t threads, a.int_or("threads", 0));
  set_threads(threads);
  FLUX_ASSIGN_OR_RETURN(std::string dir,
                        find_component_dir(model, "vae", "config.json", "AutoencoderKL"));
  FLUX_ASSIGN_OR_RETURN(auto vae, AutoencoderKL::load(dir));
  for (const std::string& k : vae->unused_keys()) {
    std::cerr << "warning: " << dir << ": checkpoint key '" << k << "' is not used by the model\n";
  }
  FLUX_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(inputs_path));
  for (const SafetensorsEntry& e : file->entries()) {
    if (e.name != "latents") {
      return absl::InvalidArgumentError(
          absl::StrCat(inputs_path, ": unexpected tensor '", e.name, "' (expected latents)"));
    }
  }
  FLUX_ASSIGN_OR_RETURN(Tensor latents, file->get("latents"));
  absl::StatusOr<Tensor> sample = vae->decode(latents);
  if (!sample.ok()) {
    return absl::Status(sample.status().code(),
                        absl::StrCat(inputs_path, ": ", sample.status().message()));
  }
  FLUX_RETURN_IF_ERROR(
      write_safetensors(outputs_path, {{"sample", *sample}}, {{"producer", "fluxserve eval vae"}}));
  std::cerr << "wrote sample " << sample->shape_str() << " to " << outputs_path << "\n";
  return absl::OkStatus();
}

}  // namespace

int eval_vae_main(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "help")) {
    std::cout << kEvalVaeUsage;
    return 0;
  }
  auto a = Args::parse(args, {"model", "inputs", "outputs", "threads"});
  const absl::Status st = a.ok() ? eval_vae(*a) : a.status();
  if (!st.ok()) {
    std::cerr << "fluxserve eval vae: " << st.message() << "\n";
    if (!a.ok() || args.empty()) std::cerr << kEvalVaeUsage;
    return 1;
  }
  return 0;
}

}  // namespace fluxserve::cli
