// fluxserve: the command-line entry point: the gRPC server (`serve`, when built with
// FLUXSERVE_SERVER) and the engine tools.
#include <malloc.h>

#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#ifdef FLUXSERVE_HAVE_SERVER
#include "server/serve.h"
#endif

namespace {

constexpr const char* kUsage = R"(usage: fluxserve <command> [flags]

commands:
  serve                 the gRPC server (ImageService, ModelService, health, /metrics); see
                          `fluxserve serve --help` and server/README.md
  generate              text to PNG on the embedded default model (or --model DIR)
  eval transformer      run a checkpoint's transformer on named input tensors
                          --model DIR --inputs in.safetensors --outputs out.safetensors [--threads N]
  eval scheduler        write the flow-match sigmas/timesteps FluxPipeline would use
                          --model DIR --steps N --image-seq-len L --outputs out.safetensors
  eval clip|t5|vae      run one component: input_ids -> last_hidden_state (+ pooler_output),
                          latents -> sample (same flags as eval transformer)
  eval tokenize         --model DIR --prompt TEXT [--prompt-2 TEXT] -> input_ids_clip, input_ids_t5
  quantize              write a pipeline folder with components pre-quantized (bitsandbytes), as
                          diffusers' save_pretrained does  --model DIR --config spec.json --output DIR2
  inspect               what each component holds: device, format, quantized/total Linear layers,
                          bytes  [--model DIR] [--quant-config spec.json] [--json]
  bench transformer     time one transformer step
                          --model DIR [--image-tokens N | --height H --width W] [--text-tokens N]
                          [--batch B] [--warmup W] [--iters I] [--threads N]
  bench load            time loading the transformer: quantize on load vs a pre-quantized checkpoint
                          --model DIR [--quant-config spec.json] [--iters N] [--threads N]
  help                  this text

`fluxserve <command> --help` describes a command's flags.
)";

}  // namespace

int main(int argc, char** argv) {
  // Activations are large, short-lived buffers: keep freed ones in the heap instead of returning
  // them to the kernel, so each denoising step does not pay page faults to zero fresh pages.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "eval") return fluxserve::cli::eval_main(rest);
  if (cmd == "bench" && !rest.empty() && rest[0] == "load") {
    return fluxserve::cli::bench_load_main(std::vector<std::string>(rest.begin() + 1, rest.end()));
  }
  if (cmd == "bench") return fluxserve::cli::bench_main(rest);
  if (cmd == "generate") return fluxserve::cli::generate_main(rest);
  if (cmd == "quantize") return fluxserve::cli::quantize_main(rest);
  if (cmd == "inspect") return fluxserve::cli::inspect_main(rest);
  if (cmd == "serve") {
#ifdef FLUXSERVE_HAVE_SERVER
    // The server keeps the allocator settings above: generation steps there are as
    // allocation-heavy as in the CLI, and the registry calls malloc_trim(0) after every unload
    // and swap so that freed weights go back to the kernel.
    return fluxserve::server::serve_main(rest, fluxserve::cli::default_model_dir());
#else
    std::cerr << "fluxserve: this binary was built without the server (cmake -DFLUXSERVE_SERVER=ON "
                 "with gRPC, protobuf and prometheus-cpp installed: ./x setup)\n";
    return 2;
#endif
  }
  std::cerr << "fluxserve: unknown command '" << cmd << "'\n\n" << kUsage;
  return 2;
}
