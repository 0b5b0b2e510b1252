#include "tests/integration/client_util.h"

#include <cmath>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/integration/server_process.h"

namespace fluxserve::integration {

pb::GenerateRequest SmallRequest(std::optional<uint64_t> seed, int steps, int size) {
  pb::GenerateRequest r;
  r.set_prompt("a red fox in the snow");
  r.set_width(size);
  r.set_height(size);
  r.set_num_inference_steps(steps);
  r.set_max_sequence_length(32);
  if (seed) r.set_seed(*seed);
  return r;
}

void AddToken(grpc::ClientContext& ctx, const std::string& token) {
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
}

void SetTimeout(grpc::ClientContext& ctx, double seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(seconds * 1e3)));
}

GenerateOutcome Generate(const std::shared_ptr<grpc::Channel>& ch, const pb::GenerateRequest& req,
                         const CallOptions& opts) {
  GenerateOutcome out;
  auto stub = pb::ImageService::NewStub(ch);
  grpc::ClientContext ctx;
  AddToken(ctx, opts.token);
  SetTimeout(ctx, opts.timeout_s);
  const auto t0 = std::chrono::steady_clock::now();
  auto reader = stub->Generate(&ctx, req);
  pb::GenerateResponse ev;
  while (reader->Read(&ev)) {
    out.events.push_back(ev);
    if (ev.has_result()) out.result = ev.result();
    if (opts.on_event) opts.on_event(ev, ctx);
  }
  out.status = reader->Finish();
  out.client_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const auto& [k, v] : ctx.GetServerTrailingMetadata()) {
    out.trailers.emplace(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
  }
  return out;
}

absl::StatusOr<HealthStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& ch,
                                         const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(ch);
  grpc::ClientContext ctx;
  SetTimeout(ctx, 10);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
  return resp.status();
}

bool WaitForHealth(const std::shared_ptr<grpc::Channel>& ch, HealthStatus want, double timeout_s,
                   const std::string& service) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3));
  while (std::chrono::steady_clock::now() < deadline) {
    auto s = CheckHealth(ch, service);
    if (s.ok() && *s == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

namespace {

// Label values in the text format escape \\, \" and \n.
absl::Status ParseLabels(absl::string_view text, std::map<std::string, std::string>* labels) {
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ',' || text[i] == ' ')) ++i;
    if (i >= text.size()) break;
    const size_t eq = text.find('=', i);
    if (eq == absl::string_view::npos || eq + 1 >= text.size() || text[eq + 1] != '"') {
      return absl::InvalidArgumentError(absl::StrCat("bad labels: ", text));
    }
    std::string key(absl::StripAsciiWhitespace(text.substr(i, eq - i)));
    std::string value;
    size_t j = eq + 2;
    for (; j < text.size() && text[j] != '"'; ++j) {
      if (text[j] == '\\' && j + 1 < text.size()) {
        ++j;
        value += text[j] == 'n' ? '\n' : text[j];
      } else {
        value += text[j];
      }
    }
    if (j >= text.size()) return absl::InvalidArgumentError(absl::StrCat("bad labels: ", text));
    (*labels)[key] = value;
    i = j + 1;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MetricsText> MetricsText::Parse(const std::string& text) {
  MetricsText m;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (parts.size() == 2) m.types_[parts[0]] = parts[1];
      continue;
    }
    if (line[0] == '#') continue;
    Sample s;
    size_t value_start;
    if (const size_t brace = line.find('{'); brace != absl::string_view::npos) {
      const size_t close = line.rfind('}');
      if (close == absl::string_view::npos || close < brace) {
        return absl::InvalidArgumentError(absl::StrCat("bad sample: ", line));
      }
      s.name = std::string(line.substr(0, brace));
      if (absl::Status st = ParseLabels(line.substr(brace + 1, close - brace - 1), &s.labels);
          !st.ok()) {
        return st;
      }
      value_start = close + 1;
    } else {
      const size_t sp = line.find(' ');
      if (sp == absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat("bad sample: ", line));
      }
      s.name = std::string(line.substr(0, sp));
      value_start = sp;
    }
    std::vector<std::string> rest =
        absl::StrSplit(line.substr(value_start), ' ', absl::SkipEmpty());
    if (rest.empty()) return absl::InvalidArgumentError(absl::StrCat("no value: ", line));
    if (rest[0] == "+Inf") {
      s.value = INFINITY;
    } else if (rest[0] == "-Inf") {
      s.value = -INFINITY;
    } else if (rest[0] == "NaN") {
      s.value = NAN;
    } else if (!absl::SimpleAtod(rest[0], &s.value)) {
      return absl::InvalidArgumentError(absl::StrCat("bad value: ", line));
    }
    m.samples_.push_back(std::move(s));
  }
  return m;
}

double MetricsText::Sum(const std::string& name,
                        const std::map<std::string, std::string>& labels) const {
  double sum = 0;
  for (const Sample& s : samples_) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) match = false;
    }
    if (match) sum += s.value;
  }
  return sum;
}

bool MetricsText::Has(const std::string& name,
                      const std::map<std::string, std::string>& labels) const {
  for (const Sample& s : samples_) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) match = false;
    }
    if (match) return true;
  }
  return false;
}

std::string MetricsText::Type(const std::string& family) const {
  auto it = types_.find(family);
  return it == types_.end() ? "" : it->second;
}

absl::StatusOr<MetricsText> Scrape(int metrics_port) {
  auto body = HttpGet(metrics_port, "/metrics");
  if (!body.ok()) return body.status();
  return MetricsText::Parse(*body);
}

double WaitForMetric(int metrics_port, const std::string& name,
                     const std::map<std::string, std::string>& labels, double want,
                     double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3));
  double last = NAN;
  while (true) {
    auto m = Scrape(metrics_port);
    if (m.ok()) last = m->Sum(name, labels);
    if (last == want || std::chrono::steady_clock::now() > deadline) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace fluxserve::integration
