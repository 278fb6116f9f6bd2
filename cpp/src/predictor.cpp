// dit::Predictor (see predictor.hpp): manifest -> tokenizer + letterbox -> graphs -> masks.
#include "dit/predictor.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "backend.hpp"
#include "backends.hpp"
#include "cpu_numerics.hpp"
#include "devices.hpp"
#include "dit/errors.hpp"
#include "dit/postprocess.hpp"

namespace dit {

const char* version() { return DIT_VERSION; }

std::size_t Result::area() const {
  return static_cast<std::size_t>(std::count(mask.begin(), mask.end(), uint8_t{1}));
}

struct Predictor::Impl {
  Manifest manifest;
  Tokenizer tokenizer;
  Options options;
  std::string layout;
  std::vector<std::string> roles;  ///< the layout's graphs, in the order they run
  std::map<std::string, GraphSpec> specs;
  std::map<std::string, std::unique_ptr<Backend>> graphs;

  Impl(Manifest m, Tokenizer t, const Options& o)
      : manifest(std::move(m)), tokenizer(std::move(t)), options(o) {}
};

namespace {

Tokenizer make_tokenizer(const Manifest& m, const Options& o) {
  TokenizerOptions to;
  to.lowercase = m.lowercase;
  to.max_tokens = m.tokenizer_max_tokens;
  to.unicode_version = o.unicode_version.empty() ? m.unicode_version : o.unicode_version;
  return Tokenizer::from_vocab_file(m.path(m.vocab_file), to);
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "none" : s;
}

// "a, b or c"
std::string one_of(const std::vector<std::string>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) {
    s += (i == 0 ? "" : i + 1 == v.size() ? " or " : ", ") + v[i];
  }
  return s;
}

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

Predictor::Predictor(const std::string& export_dir, const Options& options) {
  Manifest m = read_manifest(export_dir);
  Tokenizer t = make_tokenizer(m, options);
  impl_ = std::make_unique<Impl>(std::move(m), std::move(t), options);
  if (options.max_batch < 1) {
    throw InputError("max_batch must be >= 1, got " + std::to_string(options.max_batch));
  }
  const BackendRow& row = backend_row(options.backend);
  const auto& known = row.precisions;
  if (std::find(known.begin(), known.end(), options.precision) == known.end() &&
      impl_->manifest.precisions.count(options.precision) == 0) {
    throw InputError("unknown precision '" + options.precision + "'; choose " + one_of(known));
  }
  const auto available = impl_->manifest.layouts();
  const std::string layout = options.layout.empty() ? default_layout(available) : options.layout;
  if (std::find(available.begin(), available.end(), layout) == available.end()) {
    throw ArtifactError(export_dir + " has no '" + layout + "' graphs (has: " + join(available) +
                        "); re-export with --layout " + layout + " or pick one of " +
                        join(available));
  }
  impl_->layout = layout;
  std::vector<std::string> roles;
  for (const auto& [name, layout_roles_] : layout_roles()) {
    if (name == layout) roles = layout_roles_;
  }
  impl_->roles = roles;
  for (const auto& role : roles) {  // all graphs first: the precision error before any load
    impl_->specs[role] = impl_->manifest.graph(role, options.precision);
  }
  for (const auto& role : roles) {
    const GraphSpec& spec = impl_->specs.at(role);
    const std::string path = impl_->manifest.path(spec.file);
    if (!is_file(path)) {  // read_manifest checked it; the export may have changed since
      throw ArtifactError(export_dir + " is missing " + options.precision + " graph " +
                          spec.file + " (" + role + "); " +
                          (options.precision == "fp32"
                               ? std::string("re-export")
                               : "re-run dit-deploy quantize " + export_dir +
                                     " --precision " + options.precision));
    }
  }
  if (row.cpu_numerics && parse_device(options.device).kind == "cpu") {  // CPU kernels' numerics
    // the verified-on rule (cpu_numerics.hpp); without the stored-pair check of Python
    const auto found = impl_->manifest.verified.find(options.precision);
    const VerifiedRecord record =
        found == impl_->manifest.verified.end() ? VerifiedRecord{} : found->second;
    const auto v = precision_verdict(options.precision, record, this_cpu(), false);
    if (v.action != "run") {
      throw ArtifactError(v.reason + ": dit-deploy verify " + export_dir + " --precision " +
                          options.precision);
    }
  }
  for (const auto& role : roles) {
    const GraphSpec& spec = impl_->specs.at(role);
    impl_->graphs[role] = row.open(impl_->manifest.path(spec.file), options, spec);
  }
}

Predictor::~Predictor() = default;
Predictor::Predictor(Predictor&&) noexcept = default;
Predictor& Predictor::operator=(Predictor&&) noexcept = default;

const Manifest& Predictor::manifest() const { return impl_->manifest; }
const Tokenizer& Predictor::tokenizer() const { return impl_->tokenizer; }
const std::string& Predictor::layout() const { return impl_->layout; }
const std::string& Predictor::precision() const { return impl_->options.precision; }
const std::map<std::string, GraphSpec>& Predictor::graph_specs() const { return impl_->specs; }

std::string Predictor::backend_description() const {
  return impl_->graphs.begin()->second->description();
}

PreparedBatch Predictor::prepare(const std::vector<Request>& requests) const {
  const Manifest& m = impl_->manifest;
  PreparedBatch b;
  b.batch = static_cast<int>(requests.size());
  b.size = m.input_size;
  b.max_tokens = m.max_tokens;
  const std::size_t plane = 3 * static_cast<std::size_t>(b.size) * b.size;
  b.image.resize(plane * requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const Request& r = requests[i];
    if (r.image.width <= 0 || r.image.height <= 0) {
      throw ImageError("image has zero size (" + std::to_string(r.image.height) + "x" +
                       std::to_string(r.image.width) + " pixels); pass a non-empty image.");
    }
    if (r.image.rgb == nullptr) throw ImageError("image pixels are null; pass RGB bytes");
    if (static_cast<long long>(r.image.width) * r.image.height > kDefaultMaxPixels) {
      throw ImageError("image has " + std::to_string(r.image.height) + "x" +
                       std::to_string(r.image.width) + " pixels, more than max_pixels=" +
                       std::to_string(kDefaultMaxPixels) +
                       " (decompression-bomb guard); downscale it.");
    }
    Encoding e = impl_->tokenizer.encode(r.text);
    b.input_ids.insert(b.input_ids.end(), e.input_ids.begin(), e.input_ids.end());
    b.attention_mask.insert(b.attention_mask.end(), e.attention_mask.begin(),
                            e.attention_mask.end());
    b.letterboxes.push_back(
        letterbox(r.image, b.size, m.pixel_mean, m.pixel_std, b.image.data() + i * plane,
                  impl_->options.resize_order));
  }
  return b;
}

std::vector<float> Predictor::low_res_logits(const PreparedBatch& b, int* h, int* w) const {
  const int64_t B = b.batch, L = b.max_tokens, S = b.size;
  TensorMap feeds;
  feeds["image"] = Tensor::floats({B, 3, S, S}, b.image);
  feeds["input_ids"] = Tensor::ints({B, L}, b.input_ids);
  feeds["attention_mask"] = Tensor::ints({B, L}, b.attention_mask);
  // the chain: every graph takes its inputs by name from the values computed so far
  TensorMap values = std::move(feeds);
  for (const auto& role : impl_->roles) {
    const Backend& graph = *impl_->graphs.at(role);
    TensorMap inputs;
    for (const auto& name : graph.input_names()) {
      auto found = values.find(name);
      if (found == values.end()) {
        throw ArtifactError(impl_->manifest.directory + ": graph " + role + " needs input " +
                            name + ", which no graph before it produces; re-export");
      }
      inputs[name] = found->second;
    }
    for (auto& kv : graph.run(inputs)) values[kv.first] = std::move(kv.second);
  }
  auto it = values.find("low_res_logits");
  if (it == values.end() || it->second.type != Tensor::Type::kFloat32 ||
      it->second.shape.size() != 4 || it->second.shape[0] != B || it->second.shape[1] != 1) {
    throw ArtifactError(impl_->manifest.directory +
                        ": the graphs did not return low_res_logits of shape (B, 1, h, w); "
                        "re-export with this version of dit-deploy");
  }
  *h = static_cast<int>(it->second.shape[2]);
  *w = static_cast<int>(it->second.shape[3]);
  if (*h * 4 != S || *w * 4 != S) {
    throw ArtifactError(impl_->manifest.directory + ": low_res_logits are " + std::to_string(*h) +
                        "x" + std::to_string(*w) + ", expected input_size / 4 = " +
                        std::to_string(S / 4) + "; the manifest does not match the graphs");
  }
  return std::move(it->second.f32);
}

std::vector<Result> Predictor::predict_batch(const std::vector<Request>& requests) const {
  std::vector<Result> results;
  results.reserve(requests.size());
  const std::size_t step = static_cast<std::size_t>(impl_->options.max_batch);
  for (std::size_t start = 0; start < requests.size(); start += step) {
    std::vector<Request> chunk(requests.begin() + static_cast<std::ptrdiff_t>(start),
                               requests.begin() + static_cast<std::ptrdiff_t>(
                                                      std::min(requests.size(), start + step)));
    PreparedBatch b = prepare(chunk);
    int h = 0, w = 0;
    std::vector<float> logits = low_res_logits(b, &h, &w);
    for (int i = 0; i < b.batch; ++i) {
      std::vector<float> full =
          upsample_logits(logits.data() + static_cast<std::size_t>(i) * h * w, h, w, 4);
      const Letterbox& lb = b.letterboxes[static_cast<std::size_t>(i)];
      MaskOutput mo = logits_to_mask(full.data(), lb, impl_->manifest.mask_threshold);
      Result r;
      r.width = lb.orig_w;
      r.height = lb.orig_h;
      r.mask = std::move(mo.mask);
      r.score = mo.score;
      r.letterbox = lb;
      results.push_back(std::move(r));
    }
  }
  return results;
}

Result Predictor::predict(const ImageView& image, const std::string& text) const {
  return predict_batch({Request{image, text}}).front();
}

Result Predictor::predict(const uint8_t* rgb, int width, int height,
                          const std::string& text) const {
  return predict(ImageView{rgb, width, height, 0}, text);
}

}  // namespace dit
