// A minimal test harness: CHECK(...) records failures, main() returns their count.
#pragma once

#include <cmath>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace dit_test {

inline int& failures() {
  static int n = 0;
  return n;
}

inline std::vector<std::pair<std::string, std::function<void()>>>& registry() {
  static std::vector<std::pair<std::string, std::function<void()>>> r;
  return r;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().emplace_back(name, fn); }
};

inline int run_all() {
  int passed = 0, failed = 0;
  for (auto& [name, fn] : registry()) {
    const int before = failures();
    try {
      fn();
    } catch (const std::exception& e) {
      std::cerr << "  unexpected exception: " << e.what() << "\n";
      ++failures();
    }
    if (failures() == before) {
      ++passed;
      std::cout << "ok   " << name << "\n";
    } else {
      ++failed;
      std::cout << "FAIL " << name << "\n";
    }
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 ? 0 : 1;
}

}  // namespace dit_test

#define DIT_CAT2(a, b) a##b
#define DIT_CAT(a, b) DIT_CAT2(a, b)
#define TEST(name)                                                              \
  static void name();                                                           \
  static dit_test::Register DIT_CAT(reg_, name)(#name, name);                   \
  static void name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK(" #cond ") failed\n";     \
      ++dit_test::failures();                                                        \
    }                                                                                \
  } while (0)

#define CHECK_EQ(a, b)                                                                    \
  do {                                                                                    \
    auto va_ = (a);                                                                       \
    auto vb_ = (b);                                                                       \
    if (!(va_ == vb_)) {                                                                  \
      std::cerr << __FILE__ << ":" << __LINE__ << ": " #a " == " #b " failed (" << va_    \
                << " vs " << vb_ << ")\n";                                                \
      ++dit_test::failures();                                                             \
    }                                                                                     \
  } while (0)

#define CHECK_NEAR(a, b, tol) CHECK(std::fabs(double(a) - double(b)) <= (tol))

/// CHECK that `expr` throws `Type` whose message contains `needle`.
#define CHECK_THROWS(Type, expr, needle)                                                  \
  do {                                                                                    \
    bool thrown_ = false;                                                                 \
    try {                                                                                 \
      (void)(expr);                                                                       \
    } catch (const Type& e_) {                                                            \
      thrown_ = true;                                                                     \
      if (std::string(e_.what()).find(needle) == std::string::npos) {                     \
        std::cerr << __FILE__ << ":" << __LINE__ << ": message lacks '" << needle         \
                  << "': " << e_.what() << "\n";                                          \
        ++dit_test::failures();                                                           \
      }                                                                                   \
    }                                                                                     \
    if (!thrown_) {                                                                       \
      std::cerr << __FILE__ << ":" << __LINE__ << ": " #expr " did not throw " #Type "\n"; \
      ++dit_test::failures();                                                             \
    }                                                                                     \
  } while (0)

#define TEST_MAIN() \
  int main() { return dit_test::run_all(); }
