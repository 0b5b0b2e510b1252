// fluxctl generate: one ImageService.Generate call. Draws the streamed Queued/Progress events as
// a progress bar on stderr, writes each image as <out>/<seed>_<index>.png and prints a summary.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>

#include "absl/strings/str_format.h"
#include "fluxserve/v1/image_service.grpc.pb.h"
#include "tools/fluxctl/commands.h"

namespace fluxctl {
namespace {

constexpr const char* kGenerateUsage = R"(usage: fluxctl generate --prompt TEXT [flags]

  --prompt TEXT             the prompt (required)
  --prompt-2 TEXT           the T5 prompt (default: --prompt)
  --negative-prompt TEXT    with --true-cfg > 1: true classifier-free guidance
  --negative-prompt-2 TEXT
  --true-cfg S              true_cfg_scale
  --width W --height H      pixels (multiples of 16; the server rounds and warns otherwise)
  --steps N                 denoising steps
  --guidance G              distilled guidance (FLUX.1-dev style models)
  --max-sequence-length L   T5 tokens
  --seed S                  torch.Generator("cpu").manual_seed(S) semantics; random when absent
  --num-images N            images for the prompt (default 1)
  --model NAME              a loaded model (default: the server's default model)
  --priority P              higher runs first
  --out DIR                 where the PNGs go, as <seed>_<index>.png (default: out)
  --timeout S               deadline in seconds for the whole call (default: none)
  --quiet                   no progress bar

Unset sizes, steps and guidance take the model's defaults. Prints the model, quantization, seed
and timings of the result; exits 1 with the gRPC code and message when the server refuses.
)";

// A flag that must fit the proto's int32 field; the server judges whether the value is sensible.
absl::Status set_int32(const Flags& f, const char* name, std::optional<int32_t>* out) {
  auto v = f.int_opt(name);
  if (!v.ok()) return v.status();
  if (!v->has_value()) return absl::OkStatus();
  if (**v < std::numeric_limits<int32_t>::min() || **v > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrFormat("--%s: %d does not fit in 32 bits", name,
                                                      **v));
  }
  *out = static_cast<int32_t>(**v);
  return absl::OkStatus();
}

absl::StatusOr<fluxserve::v1::GenerateRequest> build_request(const Flags& f) {
  fluxserve::v1::GenerateRequest req;
  if (!f.has("prompt")) return absl::InvalidArgumentError("--prompt is required");
  req.set_prompt(f.str_or("prompt", ""));
  req.set_model(f.str_or("model", ""));
  if (f.has("prompt-2")) req.set_prompt_2(f.str_or("prompt-2", ""));
  if (f.has("negative-prompt")) req.set_negative_prompt(f.str_or("negative-prompt", ""));
  if (f.has("negative-prompt-2")) req.set_negative_prompt_2(f.str_or("negative-prompt-2", ""));
  std::optional<int32_t> width, height, steps, msl, num_images, priority;
  for (auto [name, dst] : {std::pair{"width", &width}, std::pair{"height", &height},
                           std::pair{"steps", &steps}, std::pair{"max-sequence-length", &msl},
                           std::pair{"num-images", &num_images}, std::pair{"priority", &priority}}) {
    if (absl::Status s = set_int32(f, name, dst); !s.ok()) return s;
  }
  if (width) req.set_width(*width);
  if (height) req.set_height(*height);
  if (steps) req.set_num_inference_steps(*steps);
  if (msl) req.set_max_sequence_length(*msl);
  if (num_images) req.set_num_images(*num_images);
  if (priority) req.set_priority(*priority);
  auto guidance = f.double_opt("guidance");
  if (!guidance.ok()) return guidance.status();
  if (guidance->has_value()) req.set_guidance_scale(static_cast<float>(**guidance));
  auto true_cfg = f.double_opt("true-cfg");
  if (!true_cfg.ok()) return true_cfg.status();
  if (true_cfg->has_value()) req.set_true_cfg_scale(static_cast<float>(**true_cfg));
  auto seed = f.uint_opt("seed");
  if (!seed.ok()) return seed.status();
  if (seed->has_value()) req.set_seed(**seed);
  return req;
}

void draw_progress(const fluxserve::v1::Progress& p) {
  constexpr int kWidth = 30;
  const int total = p.total() > 0 ? p.total() : 1;
  const int filled = std::min(kWidth, p.step() * kWidth / total);
  std::fprintf(stderr, "\r  [%s%s] %d/%d steps  %.1f s", std::string(filled, '#').c_str(),
               std::string(kWidth - filled, '.').c_str(), p.step(), p.total(),
               p.elapsed_seconds());
  std::fflush(stderr);
}

}  // namespace

int generate_main(const Connection& conn, const std::vector<std::string>& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kGenerateUsage;
      return kExitOk;
    }
  }
  auto flags = Flags::parse(
      args,
      {"prompt", "prompt-2", "negative-prompt", "negative-prompt-2", "true-cfg", "width",
       "height", "steps", "guidance", "max-sequence-length", "seed", "num-images", "model",
       "priority", "out", "timeout"},
      {"quiet"});
  if (!flags.ok()) return usage_error("generate", std::string(flags.status().message()));
  if (!flags->positional().empty()) {
    return usage_error("generate", "unexpected argument '" + flags->positional()[0] + "'");
  }
  auto req = build_request(*flags);
  if (!req.ok()) return usage_error("generate", std::string(req.status().message()));
  auto timeout = flags->double_opt("timeout");
  if (!timeout.ok()) return usage_error("generate", std::string(timeout.status().message()));
  const std::filesystem::path out_dir = flags->str_or("out", "out");
  const bool quiet = flags->has("quiet");

  Client client(conn);
  auto stub = fluxserve::v1::ImageService::NewStub(client.channel());
  grpc::ClientContext ctx;
  client.prepare(ctx, timeout->value_or(0));
  const auto t0 = std::chrono::steady_clock::now();
  auto reader = stub->Generate(&ctx, *req);
  fluxserve::v1::GenerateResponse ev;
  std::optional<fluxserve::v1::Result> result;
  bool drew = false;
  while (reader->Read(&ev)) {
    if (ev.has_queued() && !quiet) {
      std::fprintf(stderr, "  queued (%d ahead)\n", ev.queued().position());
    } else if (ev.has_progress() && !quiet) {
      draw_progress(ev.progress());
      drew = true;
    } else if (ev.has_result()) {
      result = ev.result();
    }
  }
  if (drew) std::fputc('\n', stderr);
  const grpc::Status status = reader->Finish();
  const double client_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!status.ok()) return report("generate", status);
  if (!result) {
    std::cerr << "fluxctl: generate: the stream ended without a result\n";
    return kExitRpc;
  }

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    std::cerr << "fluxctl: cannot create " << out_dir << ": " << ec.message() << "\n";
    return kExitUsage;
  }
  const auto& r = *result;
  std::cout << absl::StrFormat("model %s (quantization: %s)  seed %d  %dx%d\n", r.model(),
                               r.quantization().empty() ? "none" : r.quantization(), r.seed(),
                               r.width(), r.height());
  for (const auto& img : r.images()) {
    const std::filesystem::path path =
        out_dir / absl::StrFormat("%d_%d.png", img.seed(), img.index());
    std::ofstream out(path, std::ios::binary);
    out.write(img.data().data(), static_cast<std::streamsize>(img.data().size()));
    if (!out.good()) {
      std::cerr << "fluxctl: cannot write " << path.string() << "\n";
      return kExitUsage;
    }
    std::cout << "wrote " << path.string() << "\n";
  }
  const auto& t = r.timings();
  std::cout << absl::StrFormat(
      "time: queue %.3f s, text %.3f s, denoise %.3f s, decode %.3f s, server %.3f s, "
      "client %.3f s\n",
      t.queue_seconds(), t.text_encode_seconds(), t.denoise_seconds(), t.decode_seconds(),
      t.total_seconds(), client_s);
  for (const std::string& w : r.warnings()) std::cout << "warning: " << w << "\n";
  return kExitOk;
}

int usage_error(const std::string& command, const std::string& message) {
  std::cerr << "fluxctl " << command << ": " << message << "\n(see fluxctl "
            << (command == "fluxctl" ? "" : command + " ") << "--help)\n";
  return kExitUsage;
}

}  // namespace fluxctl
