// BERT WordPiece tokenizer (see tokenizer.hpp). Unicode properties, case mapping and
// normalisation come from ICU; the steps and their order are those of dit_deploy/tokenizer.py.
#include "dit/tokenizer.hpp"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/uversion.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "dit/errors.hpp"

namespace dit {
namespace {

constexpr std::size_t kMaxInputCharsPerWord = 100;

const char32_t kCjkRanges[][2] = {
    {0x4E00, 0x9FFF},   {0x3400, 0x4DBF},   {0x20000, 0x2A6DF}, {0x2A700, 0x2B73F},
    {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0xF900, 0xFAFF},   {0x2F800, 0x2FA1F},
};

bool is_cjk(char32_t cp) {
  for (const auto& r : kCjkRanges) {
    if (cp >= r[0] && cp <= r[1]) return true;
  }
  return false;
}

bool is_other_category(int cat) {  // Python's category(c).startswith("C")
  return cat == U_CONTROL_CHAR || cat == U_FORMAT_CHAR || cat == U_PRIVATE_USE_CHAR ||
         cat == U_SURROGATE || cat == U_UNASSIGNED;
}

bool is_punctuation_category(int cat) {  // "P*"
  return cat == U_DASH_PUNCTUATION || cat == U_START_PUNCTUATION || cat == U_END_PUNCTUATION ||
         cat == U_CONNECTOR_PUNCTUATION || cat == U_OTHER_PUNCTUATION ||
         cat == U_INITIAL_PUNCTUATION || cat == U_FINAL_PUNCTUATION;
}

/// Python's str.isspace() (what str.split() splits on): bidi class WS, B or S, or category Zs.
bool py_isspace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

icu::UnicodeString to_icu(const std::u32string& s) {
  icu::UnicodeString out;
  for (char32_t c : s) out.append(static_cast<UChar32>(c));
  return out;
}

std::u32string from_icu(const icu::UnicodeString& s) {
  std::u32string out;
  out.reserve(static_cast<std::size_t>(s.length()));
  for (int32_t i = 0; i < s.length();) {
    UChar32 c = s.char32At(i);
    out.push_back(static_cast<char32_t>(c));
    i += U16_LENGTH(c);
  }
  return out;
}

const icu::Normalizer2& normalizer(bool nfc) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n =
      nfc ? icu::Normalizer2::getNFCInstance(status) : icu::Normalizer2::getNFDInstance(status);
  if (U_FAILURE(status) || n == nullptr) {
    throw Error(std::string("ICU cannot load its normalisation data (") + u_errorName(status) +
                "); reinstall libicu");
  }
  return *n;
}

std::u32string normalize(const std::u32string& s, bool nfc) {
  UErrorCode status = U_ZERO_ERROR;
  icu::UnicodeString out = normalizer(nfc).normalize(to_icu(s), status);
  if (U_FAILURE(status)) {
    throw TextError(std::string("Unicode normalisation failed: ") + u_errorName(status));
  }
  return from_icu(out);
}

std::string read_file(const std::string& path, bool* ok) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *ok = false;
    return {};
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  *ok = static_cast<bool>(f) || f.eof();
  return ss.str();
}

}  // namespace

std::u32string utf8_to_u32(const std::string& text, const char* what) {
  std::u32string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    unsigned char c = s[i];
    char32_t cp = 0;
    std::size_t len = 0;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F;
      len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F;
      len = 3;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07;
      len = 4;
    } else {
      len = 0;
    }
    bool bad = len == 0 || i + len > n;
    for (std::size_t k = 1; !bad && k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) bad = true;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (!bad) {
      static const char32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      bad = cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (bad) {
      throw TextError(std::string(what) + " is not valid UTF-8 (bad byte sequence at offset " +
                      std::to_string(i) + "); pass UTF-8 encoded text");
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string u32_to_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

Tokenizer Tokenizer::from_vocab_file(const std::string& path, const TokenizerOptions& options) {
  bool ok = true;
  std::string data = read_file(path, &ok);
  if (!ok) {
    throw ArtifactError("cannot read tokenizer vocabulary " + path +
                        ". Point to the vocab.txt of bert-base-uncased (it ships in every export "
                        "directory).");
  }
  try {
    utf8_to_u32(data, "vocabulary");
  } catch (const TextError&) {
    throw ArtifactError("cannot read tokenizer vocabulary " + path +
                        ": it is not UTF-8 text. Point to the vocab.txt of bert-base-uncased.");
  }
  // Python reads it in text mode (universal newlines: \r\n, \r and \n end a line), splits on
  // "\n" and drops one trailing empty line.
  std::vector<std::string> lines;
  std::string cur;
  for (std::size_t i = 0; i < data.size(); ++i) {
    char c = data[i];
    if (c == '\r' || c == '\n') {
      lines.push_back(cur);
      cur.clear();
      if (c == '\r' && i + 1 < data.size() && data[i + 1] == '\n') ++i;
    } else {
      cur.push_back(c);
    }
  }
  lines.push_back(cur);
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(lines.size());
  for (std::size_t i = 0; i < lines.size(); ++i) vocab[lines[i]] = static_cast<int64_t>(i);
  if (vocab.empty()) {
    throw ArtifactError("tokenizer vocabulary " + path + " is empty; re-export the model.");
  }
  std::string missing;
  for (const char* t : {"[CLS]", "[SEP]", "[PAD]", "[UNK]"}) {
    if (!vocab.count(t)) missing += std::string(missing.empty() ? "" : ", ") + t;
  }
  if (!missing.empty()) {
    throw ArtifactError("tokenizer vocabulary " + path + " lacks the special tokens [" + missing +
                        "]; it is not a BERT vocab.txt.");
  }
  return Tokenizer(std::move(vocab), options);
}

Tokenizer::Tokenizer(std::unordered_map<std::string, int64_t> vocab,
                     const TokenizerOptions& options)
    : vocab_(std::move(vocab)), options_(options) {
  if (options_.max_tokens < 3) {
    throw ArtifactError("max_tokens must be >= 3 ([CLS], one piece, [SEP]), got " +
                        std::to_string(options_.max_tokens));
  }
  for (const char* t : {"[CLS]", "[SEP]", "[PAD]", "[UNK]"}) {
    if (!vocab_.count(t)) {
      throw ArtifactError(std::string("tokenizer vocabulary lacks the special token ") + t);
    }
  }
  cls_id_ = vocab_.at("[CLS]");
  sep_id_ = vocab_.at("[SEP]");
  pad_id_ = vocab_.at("[PAD]");
  unk_id_ = vocab_.at("[UNK]");
  if (!options_.unicode_version.empty()) {
    UVersionInfo v;
    u_versionFromString(v, options_.unicode_version.c_str());
    if (v[0] == 0) {
      throw ArtifactError("unicode_version '" + options_.unicode_version +
                          "' is not a version like 14.0.0");
    }
    std::memcpy(max_age_, v, 4);
    age_filter_ = true;
  }
}

int Tokenizer::category(char32_t cp) const {
  UChar32 c = static_cast<UChar32>(cp);
  if (age_filter_) {
    UVersionInfo age;
    u_charAge(c, age);
    if (std::memcmp(age, max_age_, 4) > 0) return U_UNASSIGNED;
  }
  return u_charType(c);
}

std::vector<std::string> Tokenizer::basic_tokenize(const std::u32string& text) const {
  // 1. clean: drop NUL, U+FFFD and control characters; whitespace -> " "
  std::u32string cleaned;
  cleaned.reserve(text.size());
  for (char32_t c : text) {
    if (c == 0 || c == 0xFFFD) continue;
    int cat = category(c);
    bool ws = c == U' ' || c == U'\t' || c == U'\n' || c == U'\r' || cat == U_SPACE_SEPARATOR;
    bool control = !(c == U'\t' || c == U'\n' || c == U'\r') && is_other_category(cat);
    if (control) continue;
    cleaned.push_back(ws ? U' ' : c);
  }
  // 2. spaces around CJK ideographs, then NFC
  std::u32string spaced;
  spaced.reserve(cleaned.size());
  for (char32_t c : cleaned) {
    if (is_cjk(c)) {
      spaced.push_back(U' ');
      spaced.push_back(c);
      spaced.push_back(U' ');
    } else {
      spaced.push_back(c);
    }
  }
  std::u32string nfc = normalize(spaced, true);
  // 3. split on whitespace; lowercase + strip accents; split punctuation
  std::vector<std::string> words;
  std::size_t i = 0;
  while (i < nfc.size()) {
    while (i < nfc.size() && py_isspace(nfc[i])) ++i;
    std::size_t start = i;
    while (i < nfc.size() && !py_isspace(nfc[i])) ++i;
    if (i == start) break;
    std::u32string word = nfc.substr(start, i - start);
    if (options_.lowercase) {
      icu::UnicodeString u = to_icu(word);
      u.toLower(icu::Locale::getRoot());  // full case mapping, Final_Sigma, like str.lower()
      std::u32string nfd = normalize(from_icu(u), false);
      word.clear();
      for (char32_t c : nfd) {
        if (category(c) != U_NON_SPACING_MARK) word.push_back(c);
      }
    }
    std::u32string current;
    for (char32_t c : word) {
      bool punct = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
                   (c >= 123 && c <= 126) || is_punctuation_category(category(c));
      if (punct) {
        if (!current.empty()) words.push_back(u32_to_utf8(current));
        current.clear();
        words.push_back(u32_to_utf8(std::u32string(1, c)));
      } else {
        current.push_back(c);
      }
    }
    if (!current.empty()) words.push_back(u32_to_utf8(current));
  }
  return words;
}

void Tokenizer::wordpiece(const std::u32string& word, std::vector<std::string>& out) const {
  if (word.size() > kMaxInputCharsPerWord) {
    out.emplace_back("[UNK]");
    return;
  }
  std::vector<std::string> pieces;
  std::size_t start = 0;
  while (start < word.size()) {
    std::size_t end = word.size();
    std::string found;
    while (end > start) {
      std::string piece = u32_to_utf8(word.substr(start, end - start));
      if (start > 0) piece = "##" + piece;
      if (vocab_.count(piece)) {
        found = std::move(piece);
        break;
      }
      --end;
    }
    if (end == start) {
      out.emplace_back("[UNK]");
      return;
    }
    pieces.push_back(std::move(found));
    start = end;
  }
  for (auto& p : pieces) out.push_back(std::move(p));
}

std::vector<std::string> Tokenizer::tokenize(const std::string& text) const {
  std::u32string u = utf8_to_u32(text, "the referring expression");
  if (u.size() > static_cast<std::size_t>(options_.max_chars)) {
    throw TextError("referring expression has " + std::to_string(u.size()) +
                    " characters, more than the limit of " + std::to_string(options_.max_chars) +
                    " (max_chars); DIT reads only the first " +
                    std::to_string(options_.max_tokens - 2) +
                    " word pieces anyway, so shorten the text.");
  }
  std::vector<std::string> pieces;
  for (const std::string& w : basic_tokenize(u)) wordpiece(utf8_to_u32(w), pieces);
  return pieces;
}

Encoding Tokenizer::encode(const std::string& text) const {
  std::vector<std::string> pieces = tokenize(text);
  if (pieces.empty()) {
    throw TextError("referring expression '" + text +
                    "' is empty (only whitespace or control characters); describe the object "
                    "to segment.");
  }
  const std::size_t keep = static_cast<std::size_t>(options_.max_tokens - 2);
  Encoding e;
  e.truncated = pieces.size() > keep;
  e.tokens.emplace_back("[CLS]");
  for (std::size_t i = 0; i < pieces.size() && i < keep; ++i) e.tokens.push_back(pieces[i]);
  e.tokens.emplace_back("[SEP]");
  e.input_ids.assign(static_cast<std::size_t>(options_.max_tokens), pad_id_);
  e.attention_mask.assign(static_cast<std::size_t>(options_.max_tokens), 0);
  for (std::size_t i = 0; i < e.tokens.size(); ++i) {
    auto it = vocab_.find(e.tokens[i]);
    e.input_ids[i] = it == vocab_.end() ? unk_id_ : it->second;
    e.attention_mask[i] = 1;
  }
  return e;
}

}  // namespace dit
