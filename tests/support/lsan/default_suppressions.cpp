// LeakSanitizer's start-up hook, linked into every test executable (see
// tests/CMakeLists.txt): it hands LSan tests/lsan.supp, embedded at build
// time, so the suppressions hold however a test binary is run (ctest,
// scripts/test, or by hand) and live in one list. Without LSan nothing calls it.
#include <string_view>

namespace runner::testing {
std::string_view LsanSuppressionsText();  // generated from tests/lsan.supp
}

extern "C" const char* __lsan_default_suppressions();  // NOLINT(bugprone-reserved-identifier)
extern "C" const char* __lsan_default_suppressions() {
  return runner::testing::LsanSuppressionsText().data();  // NUL-terminated by embed_file.cmake
}
