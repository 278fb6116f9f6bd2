// Tokenizer cases (expected ids from dit_deploy/tokenizer.py on tests/fixtures/tiny_vocab.txt).
#include <fstream>
#include <string>
#include <vector>

#include "check.hpp"
#include "dit/dit.hpp"

namespace {
const std::string kVocab = std::string(DIT_REPO_ROOT) + "/tests/fixtures/tiny_vocab.txt";

std::vector<int64_t> ids(std::vector<int64_t> head) {
  head.resize(20, 0);
  return head;
}
}  // namespace

TEST(basic_sentence) {
  dit::Tokenizer t = dit::Tokenizer::from_vocab_file(kVocab);
  dit::Encoding e = t.encode("The man on the LEFT.");
  CHECK(e.input_ids == ids({2, 71, 103, 76, 71, 79, 67, 3}));
  CHECK(e.attention_mask == (std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0,
                                                  0, 0, 0, 0}));
  CHECK_EQ(e.tokens.size(), 8u);
  CHECK(!e.truncated);
}

TEST(unknown_and_punctuation) {
  dit::Tokenizer t = dit::Tokenizer::from_vocab_file(kVocab);
  CHECK(t.encode("zq9 left-one").input_ids == ids({2, 1, 79, 70, 73, 3}));
}

TEST(accents_stripped_wordpieces) {
  dit::Tokenizer t = dit::Tokenizer::from_vocab_file(kVocab);
  dit::Encoding e = t.encode("\xCE\xA9mega caf\xC3\xA9");  // "Ωmega café"
  CHECK(e.input_ids == ids({2, 1, 7, 31, 36, 35, 3}));
  CHECK_EQ(e.tokens[3], std::string("##a"));
}

TEST(truncation_to_max_tokens) {
  dit::Tokenizer t = dit::Tokenizer::from_vocab_file(kVocab);
  std::string s;
  for (int i = 0; i < 30; ++i) s += "a ";
  dit::Encoding e = t.encode(s);
  CHECK(e.truncated);
  CHECK_EQ(e.input_ids[0], 2);
  CHECK_EQ(e.input_ids[19], 3);
  CHECK_EQ(e.input_ids[18], 5);
}

TEST(long_word_is_unk) {
  dit::Tokenizer t = dit::Tokenizer::from_vocab_file(kVocab);
  CHECK(t.tokenize(std::string(101, 'a')) == std::vector<std::string>{"[UNK]"});
  CHECK_EQ(t.tokenize(std::string(100, 'a')).size(), 100u);
}

TEST(control_and_whitespace) {
  dit::Tokenizer t = dit::Tokenizer::from_vocab_file(kVocab);
  std::vector<std::string> want{"the", "man"};
  CHECK(t.tokenize(std::string("the\x07\tman")) == want);
  CHECK(t.tokenize("the\xC2\xA0man") == want);     // no-break space
  CHECK(t.tokenize("the\xE2\x80\xA8man") == want);  // line separator: Python's split()
}

TEST(errors) {
  dit::Tokenizer t = dit::Tokenizer::from_vocab_file(kVocab);
  CHECK_THROWS(dit::TextError, t.encode("   \t "), "empty");
  CHECK_THROWS(dit::TextError, t.encode("bad \xC3\x28 utf8"), "UTF-8");
  CHECK_THROWS(dit::TextError, t.encode(std::string(1001, 'a')), "max_chars");
  CHECK_THROWS(dit::ArtifactError, dit::Tokenizer::from_vocab_file("/nonexistent/vocab.txt"),
               "cannot read");
}

TEST(vocab_without_specials) {
  const std::string path = std::string(DIT_TEST_TMP) + "_bad_vocab.txt";
  std::ofstream(path) << "a\nb\n[CLS]\n";
  CHECK_THROWS(dit::ArtifactError, dit::Tokenizer::from_vocab_file(path), "special tokens");
  std::ofstream(path, std::ios::trunc) << "";
  CHECK_THROWS(dit::ArtifactError, dit::Tokenizer::from_vocab_file(path), "empty");
}

TEST_MAIN()
