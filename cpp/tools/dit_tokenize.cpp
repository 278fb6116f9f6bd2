// dit_tokenize: the C++ tokenizer as a filter, for parity checks against the Python one.
//
//   echo '["the man on the left", "café"]' | dit_tokenize --export EXPORT_DIR
//   dit_tokenize --vocab vocab.txt [--max-tokens 20] [--cased] [--unicode-version 14.0.0] < texts.json
//
// Reads a JSON array of strings on stdin; prints a JSON array with, per text, either
// {"input_ids", "attention_mask", "tokens", "truncated"} or {"error", "message"}.
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "dit/dit.hpp"

int main(int argc, char** argv) {
  std::string vocab, export_dir;
  dit::TokenizerOptions opts;
  bool unicode_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "dit_tokenize: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--vocab") {
      vocab = value();
    } else if (a == "--export") {
      export_dir = value();
    } else if (a == "--max-tokens") {
      opts.max_tokens = std::stoi(value());
    } else if (a == "--cased") {
      opts.lowercase = false;
    } else if (a == "--unicode-version") {
      opts.unicode_version = value();
      unicode_given = true;
    } else {
      std::cerr << "usage: dit_tokenize (--vocab FILE | --export DIR) [--max-tokens N] [--cased]"
                   " [--unicode-version V] < texts.json\n";
      return 2;
    }
  }
  try {
    if (!export_dir.empty()) {
      dit::Manifest m = dit::read_manifest(export_dir);
      vocab = m.path(m.vocab_file);
      opts.lowercase = m.lowercase;
      opts.max_tokens = m.tokenizer_max_tokens;
      if (!unicode_given) opts.unicode_version = m.unicode_version;
    }
    if (vocab.empty()) {
      std::cerr << "dit_tokenize: pass --vocab FILE or --export DIR\n";
      return 2;
    }
    dit::Tokenizer tok = dit::Tokenizer::from_vocab_file(vocab, opts);
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    nlohmann::json texts = nlohmann::json::parse(input);
    nlohmann::json out = nlohmann::json::array();
    for (const auto& t : texts) {
      try {
        dit::Encoding e = tok.encode(t.get<std::string>());
        out.push_back({{"input_ids", e.input_ids},
                       {"attention_mask", e.attention_mask},
                       {"tokens", e.tokens},
                       {"truncated", e.truncated}});
      } catch (const dit::TextError& exc) {
        out.push_back({{"error", "TextError"}, {"message", exc.what()}});
      }
    }
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return 0;
  } catch (const dit::Error& e) {
    std::cerr << "dit_tokenize: " << e.what() << "\n";
    return 3;
  } catch (const nlohmann::json::exception& e) {
    std::cerr << "dit_tokenize: stdin is not a JSON array of strings: " << e.what() << "\n";
    return 2;
  }
}
