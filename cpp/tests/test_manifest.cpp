// manifest.json with "precisions" (dit-deploy quantize): parsing, graph selection by
// precision, and the typed error naming the fix when a precision was not exported.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "check.hpp"
#include "cpu_numerics.hpp"
#include "dit/dit.hpp"

namespace {
const std::string kTmp = DIT_TEST_TMP;
const std::string kVocab = std::string(DIT_REPO_ROOT) + "/tests/fixtures/tiny_vocab.txt";

std::string make_dir(const std::string& name) {
  std::string d = kTmp + "/" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  std::ifstream in(kVocab, std::ios::binary);
  std::ofstream out(d + "/vocab.txt", std::ios::binary);
  out << in.rdbuf();
  return d;
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string graph(const std::string& file, const std::string& precision) {
  return R"({"file": ")" + file + R"(", "precision": ")" + precision + R"(", "sha256": "ab12",
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 96, 96]},
               {"name": "input_ids", "dtype": "int64", "shape": ["batch", 20]}],
    "outputs": [{"name": "low_res_logits", "dtype": "float32", "shape": ["batch", 1, 24, 24]}]})";
}

/// A fused export; `precisions` is the JSON value of "precisions" ("" = no such key).
std::string manifest_json(const std::string& precisions) {
  return R"({"config_name": "t", "variant": "layer_wise", "input_size": 96, "max_tokens": 20,
    "mask_threshold": 0.35, "pixel_mean": [0.485, 0.456, 0.406], "pixel_std": [0.229, 0.224, 0.225],
    "tokenizer": {"vocab_file": "vocab.txt", "lowercase": true, "max_tokens": 20},
    "graphs": {"dit_fused": )" +
         graph("dit_fused.onnx", "fp32") + "},\n" +
         (precisions.empty() ? std::string() : "\"precisions\": " + precisions + ",\n") +
         "\"manifest_version\": 1}";
}

const std::string kFp16 = R"({"fp16": {"dit_fused": )" + graph("dit_fused.fp16.onnx", "fp16") +
                          "}}";

std::string with_graphs(const std::string& d, const std::vector<std::string>& files) {
  for (const auto& f : files) write(d + "/" + f, "not a protobuf");
  return d;
}
}  // namespace

TEST(precisions_parsed) {
  std::string d = with_graphs(make_dir("precisions_parsed"), {"dit_fused.onnx",
                                                              "dit_fused.fp16.onnx",
                                                              "dit_fused.int8.onnx"});
  write(d + "/manifest.json",
        manifest_json(R"({"int8": {"dit_fused": )" + graph("dit_fused.int8.onnx", "int8") +
                      R"(}, "fp16": {"dit_fused": )" + graph("dit_fused.fp16.onnx", "fp16") +
                      "}}"));
  dit::Manifest m = dit::read_manifest(d);
  CHECK_EQ(m.precisions.size(), std::size_t{2});
  CHECK((m.precision_names() == std::vector<std::string>{"fp32", "fp16", "int8"}));
  CHECK_EQ(m.graph("dit_fused").file, std::string("dit_fused.onnx"));
  CHECK_EQ(m.graph("dit_fused", "fp32").precision, std::string("fp32"));
  const dit::GraphSpec& g16 = m.graph("dit_fused", "fp16");
  CHECK_EQ(g16.file, std::string("dit_fused.fp16.onnx"));
  CHECK_EQ(g16.precision, std::string("fp16"));
  CHECK_EQ(g16.sha256, std::string("ab12"));
  CHECK_EQ(g16.inputs.size(), std::size_t{2});
  CHECK_EQ(g16.inputs[0].shape[0], -1LL);  // "batch"
  CHECK_EQ(g16.inputs[1].dtype, std::string("int64"));
  CHECK_EQ(g16.outputs.at(0).name, std::string("low_res_logits"));
  CHECK_EQ(m.graph("dit_fused", "int8").file, std::string("dit_fused.int8.onnx"));
  CHECK_EQ(m.path(m.graph("dit_fused", "int8").file), d + "/dit_fused.int8.onnx");
  // FP32 layouts are unchanged by the extra precisions
  CHECK((m.layouts() == std::vector<std::string>{"fused"}));
  // a role the precision lacks: re-run quantize.py for it
  CHECK_THROWS(dit::ArtifactError, m.graph("text_encoder", "int8"),
               "dit-deploy quantize " + d + " --precision int8");
}

TEST(no_precisions_key) {
  std::string d = with_graphs(make_dir("no_precisions"), {"dit_fused.onnx"});
  write(d + "/manifest.json", manifest_json(""));
  dit::Manifest m = dit::read_manifest(d);
  CHECK(m.precisions.empty());
  CHECK((m.precision_names() == std::vector<std::string>{"fp32"}));
  CHECK_EQ(m.graph("dit_fused").file, std::string("dit_fused.onnx"));
  write(d + "/manifest.json", manifest_json("null"));
  CHECK(dit::read_manifest(d).precisions.empty());
  write(d + "/manifest.json", manifest_json("{}"));
  CHECK(dit::read_manifest(d).precisions.empty());
}

TEST(missing_precision_error) {
  std::string d = with_graphs(make_dir("missing_precision"), {"dit_fused.onnx",
                                                              "dit_fused.fp16.onnx"});
  write(d + "/manifest.json", manifest_json(kFp16));
  dit::Manifest m = dit::read_manifest(d);
  // names the export directory, what it has, and the command that makes the missing precision
  const std::string want = d + " has no int8 graphs (has: fp32, fp16); create them with: dit-deploy "
                               "quantize " + d + " --precision int8";
  CHECK_THROWS(dit::ArtifactError, m.graph("dit_fused", "int8"), want);
  dit::Options o;
  o.precision = "int8";
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o), want);
  o.layout = "fused";
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o), "(has: fp32, fp16)");
  // before any graph is loaded, whatever the backend
  o.backend = "tensorrt";
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o), "--precision int8");
  // an export never quantized
  write(d + "/manifest.json", manifest_json(""));
  o.backend = "onnxruntime";
  o.precision = "fp16";
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o),
               "has no fp16 graphs (has: fp32); create them with: dit-deploy quantize");
  // not a precision at all: an option error
  o.precision = "bf16";
  CHECK_THROWS(dit::InputError, dit::Predictor(d, o), "choose fp32, fp16 or int8");
}

TEST(execution_precision_refused) {
  // bf16 as dit-deploy records it: the FP32 file, run in BF16 by OpenVINO. ONNX Runtime would
  // run it in FP32, so the C++ runtime refuses the entry instead of mislabelling it.
  std::string d = with_graphs(make_dir("execution"), {"dit_fused.onnx"});
  std::string bf16 = graph("dit_fused.onnx", "bf16");
  bf16.insert(1, R"("execution": "openvino-bf16", )");
  write(d + "/manifest.json", manifest_json(R"({"bf16": {"dit_fused": )" + bf16 + "}}"));
  dit::Manifest m = dit::read_manifest(d);
  CHECK_EQ(m.precisions.at("bf16").at("dit_fused").execution, std::string("openvino-bf16"));
  CHECK_EQ(m.graph("dit_fused").execution, std::string());
  CHECK_THROWS(dit::BackendUnavailableError, m.graph("dit_fused", "bf16"),
               "execution precision (openvino-bf16)");
  CHECK_THROWS(dit::BackendUnavailableError, m.graph("dit_fused", "bf16"),
               "backend=\"openvino\", precision=\"bf16\"");
}

// a "verified" entry for `precision` on `numerics` (the table's format), spliced before the
// last brace of a manifest
std::string with_verified(std::string manifest, const std::string& precision,
                          const std::string& numerics, int weight_bits = 8) {
  const std::string entry = R"(, "verified": {")" + precision + R"(": {"scheme": {"weight_bits": )" +
                            std::to_string(weight_bits) + R"(}, "on": [{"numerics": ")" +
                            numerics + R"(", "kernels": "x86-avx512-vnni", "backend": )" +
                            R"("onnxruntime", "backend_version": "1", )" +
                            R"("stored_pairs_agreement": {"fused": 0.97}}]}})";
  manifest.insert(manifest.rfind('}'), entry);
  return manifest;
}

TEST(precision_refused_on_a_cpu_it_was_not_verified_on) {
  std::string d = with_graphs(make_dir("verified"), {"dit_fused.onnx", "dit_fused.fp16.onnx"});
  dit::Options o;
  o.precision = "fp16";
  write(d + "/manifest.json", manifest_json(kFp16));  // no record: made by an older version
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o),
               "no record of the CPU they were verified on");
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o),
               "dit-deploy verify " + d + " --precision fp16");
  // a planted record of a numerics class no x86 or ARM CPU computes fp16 as
  write(d + "/manifest.json", with_verified(manifest_json(kFp16), "fp16", "riscv-fp16"));
  CHECK(dit::read_manifest(d).verified.at("fp16").on.at(0).numerics == "riscv-fp16");
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o), "were verified on x86-avx512-vnni");
  // this CPU's own class: accepted, so the loader is reached (and rejects the fake graph)
  const std::string here = dit::precision_numerics("fp16", 8, dit::this_cpu());
  write(d + "/manifest.json", with_verified(manifest_json(kFp16), "fp16", here));
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o), "dit_fused.fp16.onnx");
}

TEST(precision_selects_graph_file) {
  std::string d = with_graphs(make_dir("select"), {"dit_fused.onnx", "dit_fused.fp16.onnx"});
  const std::string here = dit::precision_numerics("fp16", 8, dit::this_cpu());
  write(d + "/manifest.json", with_verified(manifest_json(kFp16), "fp16", here));
  // the graphs are not protobufs: the loader's error names the file it was given
  dit::Options o;
  o.precision = "fp16";
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o), "dit_fused.fp16.onnx");
  o.precision = "fp32";
  bool fp32_named = false;
  try {
    dit::Predictor p(d, o);
  } catch (const dit::ArtifactError& e) {
    const std::string msg = e.what();
    fp32_named = msg.find("dit_fused.onnx") != std::string::npos &&
                 msg.find("fp16") == std::string::npos;
  }
  CHECK(fp32_named);
#ifndef DIT_HAVE_TENSORRT
  o.precision = "fp16";
  o.backend = "tensorrt";
  CHECK_THROWS(dit::BackendUnavailableError, dit::Predictor(d, o), "dit_fused.fp16.onnx");
#endif
}

TEST(missing_or_malformed_precision_graphs) {
  std::string d = with_graphs(make_dir("missing_fp16_file"), {"dit_fused.onnx"});
  write(d + "/manifest.json", manifest_json(kFp16));
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d),
               "is missing fp16 graph dit_fused.fp16.onnx (dit_fused); re-run dit-deploy "
               "quantize " + d + " --precision fp16");
  write(d + "/manifest.json", manifest_json("[1, 2]"));
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "malformed");
  write(d + "/manifest.json", manifest_json(R"({"fp16": 3})"));
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "malformed");
  write(d + "/manifest.json", manifest_json(R"({"fp16": {"dit_fused": {"file": "x.onnx"}}})"));
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "malformed");
}

TEST(files_outside_the_export_are_refused) {
  std::string d = with_graphs(make_dir("outside"), {"dit_fused.onnx"});
  for (const std::string name : {"../outside/dit_fused.fp16.onnx", "/etc/passwd", ".."}) {
    write(d + "/manifest.json",
          manifest_json(R"({"fp16": {"dit_fused": )" + graph(name, "fp16") + "}}"));
    CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d),
                 "names graph '" + name + "', which is not a file of the export directory");
  }
}

TEST_MAIN()
