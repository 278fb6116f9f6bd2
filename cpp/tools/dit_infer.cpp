// dit_infer: segment what a referring expression describes, from the command line.
//
//   dit_infer EXPORT_DIR image.jpg "the man on the left" --out mask.png [--json]
//   dit_infer EXPORT_DIR image.jpg "the man on the left" --precision int8   (quantize.py graphs)
//
// Exit codes: 0 ok, 2 usage, 3 export directory (ArtifactError), 4 image or text (InputError),
// 5 backend or device unavailable, 1 anything else.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dit/dit.hpp"

namespace {

const char* kUsage =
    "usage: dit_infer EXPORT_DIR IMAGE TEXT [IMAGE TEXT ...] [options]\n"
    "\n"
    "Segment the object each referring expression TEXT describes in IMAGE (PNG or JPEG).\n"
    "\n"
    "options:\n"
    "  --out PATH            mask PNG (0/255) for a single IMAGE TEXT pair\n"
    "  --out-dir DIR         mask_<i>.png per pair (DIR must exist)\n"
    "  --json                print one JSON document (scores, areas, letterboxes, token ids)\n"
    "  --layout L            fused | split (default: fused when exported)\n"
    "  --precision P         fp32 (default) | fp16 | int8: run <role>.<P>.onnx (or .engine),\n"
    "                        made by python export/quantize.py EXPORT_DIR --precision P\n"
    "  --backend B           onnxruntime (default) | tensorrt (native engines)\n"
    "  --device D            cpu (default) | cuda[:N] | tensorrt[:N] (ONNX Runtime providers\n"
    "                        on GPU N); with --backend tensorrt: cuda[:N] (default cuda)\n"
    "  --threads N           intra-op threads (default: ONNX Runtime's)\n"
    "  --max-batch N         pairs run together (default 8)\n"
    "  --unicode-version V   tokenizer Unicode version (default: the manifest's, else ICU's)\n"
    "  --pillow-legacy-resize  resize passes in Pillow 10-12's order (default: Pillow >= 13)\n"
    "  --dump-input FILE     write the image tensor fed to the graphs, float32 (B,3,S,S) raw\n"
    "  --version, -h/--help\n";

struct Usage {
  std::string message;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::string out, out_dir, dump_input;
  bool device_given = false;
  bool as_json = false;
  dit::Options options;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&](const char* name) -> std::string {
        if (i + 1 >= argc) throw Usage{std::string(name) + " needs a value"};
        return argv[++i];
      };
      auto number = [&](const char* name) -> int {
        std::string v = value(name);
        try {
          std::size_t pos = 0;
          int n = std::stoi(v, &pos);
          if (pos != v.size()) throw std::invalid_argument(v);
          return n;
        } catch (const std::exception&) {
          throw Usage{std::string(name) + " needs an integer, got '" + v + "'"};
        }
      };
      if (a == "-h" || a == "--help") {
        std::cout << kUsage;
        return 0;
      } else if (a == "--version") {
        std::cout << "dit_infer " << dit::version() << "\n";
        return 0;
      } else if (a == "--out") {
        out = value("--out");
      } else if (a == "--out-dir") {
        out_dir = value("--out-dir");
      } else if (a == "--json") {
        as_json = true;
      } else if (a == "--layout") {
        options.layout = value("--layout");
      } else if (a == "--precision") {
        options.precision = value("--precision");
        if (options.precision != "fp32" && options.precision != "fp16" &&
            options.precision != "int8") {
          throw Usage{"--precision must be fp32, fp16 or int8, got '" + options.precision + "'"};
        }
      } else if (a == "--backend") {
        options.backend = value("--backend");
      } else if (a == "--device") {
        options.device = value("--device");
        device_given = true;
      } else if (a == "--threads") {
        options.threads = number("--threads");
      } else if (a == "--max-batch") {
        options.max_batch = number("--max-batch");
      } else if (a == "--unicode-version") {
        options.unicode_version = value("--unicode-version");
      } else if (a == "--pillow-legacy-resize") {
        options.resize_order = dit::PillowPassOrder::kLegacy;
      } else if (a == "--dump-input") {
        dump_input = value("--dump-input");
      } else if (a.size() > 1 && a[0] == '-' && a[1] == '-') {
        throw Usage{"unknown option " + a};
      } else {
        positional.push_back(a);
      }
    }
    // native engines run on a GPU: "--backend tensorrt" alone means GPU 0
    if (options.backend == "tensorrt" && !device_given) options.device = "cuda";
    if (positional.size() < 3 || positional.size() % 2 == 0) {
      throw Usage{"expected EXPORT_DIR followed by IMAGE TEXT pairs"};
    }
    if (!out.empty() && positional.size() != 3) {
      throw Usage{"--out takes one IMAGE TEXT pair; use --out-dir for several"};
    }
  } catch (const Usage& u) {
    std::cerr << "dit_infer: " << u.message << "\n\n" << kUsage;
    return 2;
  }

  try {
    const auto t0 = std::chrono::steady_clock::now();
    dit::Predictor predictor(positional[0], options);
    std::vector<dit::Image> images;
    std::vector<std::string> paths, texts;
    for (std::size_t i = 1; i + 1 < positional.size(); i += 2) {
      paths.push_back(positional[i]);
      texts.push_back(positional[i + 1]);
      images.push_back(dit::load_image(positional[i]));
    }
    std::vector<dit::Request> requests;
    for (std::size_t i = 0; i < images.size(); ++i) {
      requests.push_back({images[i].view(), texts[i]});
    }
    if (!dump_input.empty()) {
      dit::PreparedBatch b = predictor.prepare(requests);
      std::ofstream f(dump_input, std::ios::binary);
      f.write(reinterpret_cast<const char*>(b.image.data()),
              static_cast<std::streamsize>(b.image.size() * sizeof(float)));
      if (!f) throw dit::Error("cannot write " + dump_input);
    }
    const auto t1 = std::chrono::steady_clock::now();
    std::vector<dit::Result> results = predictor.predict_batch(requests);
    const auto t2 = std::chrono::steady_clock::now();
    nlohmann::json doc;
    doc["export_dir"] = positional[0];
    doc["layout"] = predictor.layout();
    doc["precision"] = predictor.precision();
    doc["graphs"] = nlohmann::json::object();
    for (const auto& [role, spec] : predictor.graph_specs()) doc["graphs"][role] = spec.file;
    doc["backend"] = predictor.backend_description();
    doc["load_seconds"] = std::chrono::duration<double>(t1 - t0).count();
    doc["predict_seconds"] = std::chrono::duration<double>(t2 - t1).count();
    doc["results"] = nlohmann::json::array();
    for (std::size_t i = 0; i < results.size(); ++i) {
      const dit::Result& r = results[i];
      std::string mask_path;
      if (!out.empty()) mask_path = out;
      if (!out_dir.empty()) mask_path = out_dir + "/mask_" + std::to_string(i) + ".png";
      if (!mask_path.empty()) dit::save_mask_png(mask_path, r.mask.data(), r.width, r.height);
      const dit::Encoding e = predictor.tokenizer().encode(texts[i]);
      const dit::Letterbox& lb = r.letterbox;
      const double frac = static_cast<double>(r.area()) / (double(r.width) * r.height);
      nlohmann::json item = {
          {"image", paths[i]},
          {"text", texts[i]},
          {"width", r.width},
          {"height", r.height},
          {"score", r.score},
          {"area", r.area()},
          {"area_fraction", frac},
          {"mask", mask_path.empty() ? nlohmann::json() : nlohmann::json(mask_path)},
          {"input_ids", e.input_ids},
          {"tokens", e.tokens},
          {"truncated", e.truncated},
          {"letterbox",
           {{"orig_h", lb.orig_h}, {"orig_w", lb.orig_w}, {"new_h", lb.new_h},
            {"new_w", lb.new_w}, {"top", lb.top}, {"left", lb.left}, {"size", lb.size}}}};
      doc["results"].push_back(item);
      if (!as_json) {
        std::printf("%s \"%s\": %zu px (%.1f%%), score %.3f%s%s\n", paths[i].c_str(),
                    texts[i].c_str(), r.area(), 100.0 * frac, static_cast<double>(r.score),
                    mask_path.empty() ? "" : " -> ", mask_path.c_str());
      }
    }
    if (as_json) std::cout << doc.dump(2) << "\n";
    return 0;
  } catch (const dit::ArtifactError& e) {
    std::cerr << "dit_infer: export directory error: " << e.what() << "\n";
    return 3;
  } catch (const dit::InputError& e) {
    std::cerr << "dit_infer: input error: " << e.what() << "\n";
    return 4;
  } catch (const dit::BackendUnavailableError& e) {
    std::cerr << "dit_infer: backend unavailable: " << e.what() << "\n";
    return 5;
  } catch (const std::exception& e) {
    std::cerr << "dit_infer: error: " << e.what() << "\n";
    return 1;
  }
}
