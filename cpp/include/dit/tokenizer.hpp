// BERT WordPiece tokenizer, identical to dit_deploy/tokenizer.py (Hugging Face's pure-Python
// BertTokenizer): clean text, CJK split, NFC, whitespace split, lowercase + NFD accent strip,
// punctuation split, greedy longest-match WordPiece with "##", [UNK] for words over 100 code
// points or not coverable; [CLS] + first (max_tokens - 2) pieces + [SEP], padded with [PAD].
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace dit {

/// One encoded expression (the fixed DIT layout).
struct Encoding {
  std::vector<int64_t> input_ids;       ///< (max_tokens) [CLS] pieces [SEP] pad...
  std::vector<int64_t> attention_mask;  ///< (max_tokens) 1 on real tokens, 0 on padding
  std::vector<std::string> tokens;      ///< real tokens, [CLS] and [SEP] included
  bool truncated = false;               ///< word pieces beyond max_tokens - 2 were dropped
};

struct TokenizerOptions {
  bool lowercase = true;   ///< uncased BERT: lowercase and strip accents
  int max_tokens = 20;     ///< sequence length including [CLS] and [SEP]
  int max_chars = 1000;    ///< longest accepted expression, in code points (a guard)
  /// Unicode version of the reference tokenizer (Python's unicodedata.unidata_version, e.g.
  /// "14.0.0" for Python 3.11). Code points assigned after it are treated as unassigned, as that
  /// Python would. Empty: use all of ICU's data.
  std::string unicode_version;
};

class Tokenizer {
 public:
  /// Load a BERT vocab.txt (one token a line, id = line number; later duplicates win).
  /// Throws ArtifactError when the file is missing, not UTF-8, empty or lacks a special token.
  static Tokenizer from_vocab_file(const std::string& path, const TokenizerOptions& options = {});

  Tokenizer(std::unordered_map<std::string, int64_t> vocab, const TokenizerOptions& options);

  /// Word pieces of UTF-8 `text`, without specials and without truncation.
  /// Throws TextError on invalid UTF-8 or more than max_chars code points.
  std::vector<std::string> tokenize(const std::string& text) const;

  /// The fixed layout; throws TextError when the text has no word piece.
  Encoding encode(const std::string& text) const;

  const TokenizerOptions& options() const { return options_; }
  std::size_t vocab_size() const { return vocab_.size(); }

 private:
  std::vector<std::string> basic_tokenize(const std::u32string& text) const;
  void wordpiece(const std::u32string& word, std::vector<std::string>& out) const;
  int category(char32_t cp) const;

  std::unordered_map<std::string, int64_t> vocab_;
  TokenizerOptions options_;
  unsigned char max_age_[4] = {0, 0, 0, 0};
  bool age_filter_ = false;
  int64_t cls_id_ = 0, sep_id_ = 0, pad_id_ = 0, unk_id_ = 0;
};

/// Decode UTF-8 strictly (no overlongs, surrogates or values past U+10FFFF).
/// Throws TextError naming `what` on malformed input.
std::u32string utf8_to_u32(const std::string& text, const char* what = "text");
std::string u32_to_utf8(const std::u32string& text);

}  // namespace dit
