// Error cases: typed exceptions with messages that name the file and the fix; no crash on a
// corrupt manifest, graph or image.
#include <filesystem>
#include <fstream>
#include <string>

#include "check.hpp"
#include "dit/dit.hpp"

namespace {
const std::string kTmp = DIT_TEST_TMP;
const std::string kVocab = std::string(DIT_REPO_ROOT) + "/tests/fixtures/tiny_vocab.txt";

std::string make_dir(const std::string& name) {
  std::string d = kTmp + "/" + name;
  std::filesystem::remove_all(d);  // a fresh directory on every run
  std::filesystem::create_directories(d);
  return d;
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string manifest_json(int version = 1) {
  return R"({"config_name": "t", "variant": "layer_wise", "input_size": 96, "max_tokens": 20,
    "mask_threshold": 0.35, "pixel_mean": [0.485, 0.456, 0.406], "pixel_std": [0.229, 0.224, 0.225],
    "tokenizer": {"vocab_file": "vocab.txt", "lowercase": true, "max_tokens": 20},
    "graphs": {"dit_fused": {"file": "dit_fused.onnx", "inputs": [], "outputs": []}},
    "manifest_version": )" + std::to_string(version) + "}";
}

std::string copy_vocab(const std::string& dir) {
  std::ifstream in(kVocab, std::ios::binary);
  std::ofstream out(dir + "/vocab.txt", std::ios::binary);
  out << in.rdbuf();
  return dir;
}
}  // namespace

TEST(missing_directory) {
  CHECK_THROWS(dit::ArtifactError, dit::Predictor("/nonexistent/export"), "not found");
}

TEST(no_manifest) {
  std::string d = make_dir("no_manifest");
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d), "dit-deploy export --out");
}

TEST(corrupt_manifest) {
  std::string d = make_dir("corrupt_manifest");
  write(d + "/manifest.json", "{\"config_name\": [1, 2");
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "not valid JSON");
  write(d + "/manifest.json", "[1, 2, 3]");
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "manifest version");
  write(d + "/manifest.json", manifest_json(7));
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "re-export");
  write(d + "/manifest.json", R"({"manifest_version": 1, "config_name": 3})");
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "malformed");
}

TEST(missing_vocab_and_graph) {
  std::string d = make_dir("missing_files");
  write(d + "/manifest.json", manifest_json());
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "vocab.txt");
  copy_vocab(d);
  CHECK_THROWS(dit::ArtifactError, dit::read_manifest(d), "dit_fused.onnx");
}

TEST(corrupt_graph) {
  std::string d = copy_vocab(make_dir("corrupt_graph"));
  write(d + "/manifest.json", manifest_json());
  write(d + "/dit_fused.onnx", "this is not a protobuf");
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d), "dit_fused.onnx");
  dit::Options o;
  o.layout = "split";
  CHECK_THROWS(dit::ArtifactError, dit::Predictor(d, o), "--layout split");
  o.layout = "";
  o.backend = "tensorrt";
#ifndef DIT_HAVE_TENSORRT
  CHECK_THROWS(dit::BackendUnavailableError, dit::Predictor(d, o), "DIT_WITH_TENSORRT");
#endif
  o.backend = "onnxruntime";
  o.device = "cuda";
  // no CUDA provider in a CPU build of ONNX Runtime: a clear error, not a crash
  bool threw = false;
  try {
    dit::Predictor p(d, o);
  } catch (const dit::Error&) {
    threw = true;
  }
  CHECK(threw);
}

TEST(corrupt_images) {
  std::string d = make_dir("images");
  CHECK_THROWS(dit::ImageError, dit::load_image(d + "/nope.png"), "not found");
  write(d + "/empty.png", "");
  CHECK_THROWS(dit::ImageError, dit::load_image(d + "/empty.png"), "empty");
  write(d + "/text.jpg", "hello, not an image");
  CHECK_THROWS(dit::ImageError, dit::load_image(d + "/text.jpg"), "not a PNG or JPEG");
  // a real PNG, then truncated and corrupted
  std::vector<uint8_t> mask(6 * 4, 1);
  dit::save_mask_png(d + "/ok.png", mask.data(), 6, 4);
  dit::Image ok = dit::load_image(d + "/ok.png");
  CHECK_EQ(ok.width, 6);
  CHECK_EQ(ok.height, 4);
  CHECK_EQ(int(ok.rgb[0]), 255);
  std::ifstream in(d + "/ok.png", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write(d + "/cut.png", bytes.substr(0, bytes.size() / 2));
  CHECK_THROWS(dit::ImageError, dit::load_image(d + "/cut.png"), "corrupt or truncated");
  std::string bad = bytes;
  for (std::size_t i = 40; i < bad.size(); ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5A);
  write(d + "/bad.png", bad);
  CHECK_THROWS(dit::ImageError, dit::load_image(d + "/bad.png"), "cannot decode");
  write(d + "/cut.jpg", std::string("\xFF\xD8\xFF\xE0\x00\x10JFIF\x00", 11));
  CHECK_THROWS(dit::ImageError, dit::load_image(d + "/cut.jpg"), "cannot decode");
  CHECK_THROWS(dit::ImageError, dit::load_image(d + "/ok.png", 10), "max_pixels");
}

TEST(unwritable_mask) {
  std::vector<uint8_t> mask(4, 1);
  CHECK_THROWS(dit::Error, dit::save_mask_png("/nonexistent/dir/m.png", mask.data(), 2, 2),
               "cannot write");
}

TEST_MAIN()
