// SPDX-License-Identifier: MIT
// doctest's main, failing a run whose filters select no test case: tests/meson.build runs one
// executable per header's file (--source-file=*/test_<header>.cpp), and a filter that matches
// nothing (a renamed file) must not pass as an empty success.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

namespace {

/// Records how many test cases passed the filters.
struct selection_listener : doctest::IReporter {
  static inline unsigned selected = 0;
  explicit selection_listener(const doctest::ContextOptions&) {}
  void test_run_end(const doctest::TestRunStats& stats) override { selected = stats.numTestCasesPassingFilters; }
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

REGISTER_LISTENER("selection", 1, selection_listener);

}  // namespace

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int failed = context.run();
  if (context.shouldExit()) return failed;
  if (selection_listener::selected == 0) {
    std::fprintf(stderr, "doctest: no test case matches the filters\n");
    return 1;
  }
  return failed;
}
