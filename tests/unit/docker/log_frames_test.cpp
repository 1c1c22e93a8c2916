#include "isolation/docker/log_frames.h"

#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace {

using runner::isolation::docker::FrameDemuxer;
using runner::isolation::docker::FrameStream;

std::string Frame(uint8_t stream, const std::string& payload) {
  std::string f(8, '\0');
  f[0] = static_cast<char>(stream);
  auto n = static_cast<uint32_t>(payload.size());
  f[4] = static_cast<char>(n >> 24);
  f[5] = static_cast<char>((n >> 16) & 0xff);
  f[6] = static_cast<char>((n >> 8) & 0xff);
  f[7] = static_cast<char>(n & 0xff);
  return f + payload;
}

struct Collected {
  std::string out, err, daemon_error;
  void operator()(FrameStream s, std::string_view d) {
    if (s == FrameStream::kStdout) out += d;
    if (s == FrameStream::kStderr) err += d;
    if (s == FrameStream::kError) daemon_error += d;
  }
};

}  // namespace

TEST_CASE("stdout and stderr frames are kept apart", "[docker][frames]") {
  FrameDemuxer demux;
  Collected c;
  std::string stream = Frame(1, "hello\n") + Frame(2, "oops\n") + Frame(1, "world\n");
  REQUIRE(demux.Feed(stream, std::ref(c)).ok());
  CHECK(c.out == "hello\nworld\n");
  CHECK(c.err == "oops\n");
  CHECK_FALSE(demux.MidFrame());
}

TEST_CASE("frames split across reads at every byte are reassembled", "[docker][frames]") {
  std::string stream =
      Frame(1, "abc") + Frame(2, std::string(300, 'e')) + Frame(1, "") + Frame(1, "xyz");
  for (size_t piece = 1; piece <= 9; ++piece) {
    FrameDemuxer demux;
    Collected c;
    for (size_t i = 0; i < stream.size(); i += piece) {
      REQUIRE(demux.Feed(std::string_view(stream).substr(i, piece), std::ref(c)).ok());
    }
    CHECK(c.out == "abcxyz");
    CHECK(c.err == std::string(300, 'e'));
    CHECK_FALSE(demux.MidFrame());
  }
}

TEST_CASE("a stream cut inside a frame is reported as mid-frame", "[docker][frames]") {
  FrameDemuxer demux;
  Collected c;
  std::string f = Frame(1, "abcdef");
  REQUIRE(demux.Feed(f.substr(0, 10), std::ref(c)).ok());
  CHECK(c.out == "ab");
  CHECK(demux.MidFrame());
}

TEST_CASE("a daemon error frame (type 3) reaches the sink as an error", "[docker][frames]") {
  FrameDemuxer demux;
  Collected c;
  REQUIRE(demux.Feed(Frame(3, "error from daemon"), std::ref(c)).ok());
  CHECK(c.daemon_error == "error from daemon");
  CHECK(c.out.empty());
}

TEST_CASE("raw TTY output is rejected instead of being misread as frames", "[docker][frames]") {
  FrameDemuxer demux;
  Collected c;
  auto st = demux.Feed("hello world, no frames here", std::ref(c));
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().code == "internal");
}

// The warm launcher's exit report (ExitReportScanner).
namespace {

using runner::isolation::docker::ExitReportScanner;

const std::string kReport = "\x1erunner-exit abc123 0 6 4\n";

// Feeds `out` and `err` to a scanner in pieces of `step` bytes, stdout first.
std::pair<Collected, std::optional<int>> Scan(const std::string& out, const std::string& err,
                                              size_t step, bool flush = false) {
  ExitReportScanner scanner("abc123");
  Collected c;
  auto sink = [&](FrameStream s, std::string_view d) { c(s, d); };
  for (size_t i = 0; i < out.size(); i += step) {
    scanner.Feed(FrameStream::kStdout, std::string_view(out).substr(i, step), sink);
  }
  for (size_t i = 0; i < err.size(); i += step) {
    scanner.Feed(FrameStream::kStderr, std::string_view(err).substr(i, step), sink);
  }
  if (flush) scanner.Flush(sink);
  return {c, scanner.Status()};
}

}  // namespace

TEST_CASE("the exit report is taken out of the output, split anywhere", "[docker][report]") {
  for (size_t step : {1, 2, 3, 7, 64}) {
    auto [c, status] = Scan("hello\n" + kReport, "err\n", step);
    CHECK(c.out == "hello\n");
    CHECK(c.err == "err\n");
    REQUIRE(status.has_value());
    CHECK(*status == 0);
  }
}

TEST_CASE("the report ends the task only once the output it counts has come", "[docker][report]") {
  // The stderr it counts is still on its way.
  auto [c, status] = Scan("hello\n" + kReport, "er", 64);
  CHECK(!status.has_value());
  // Stdout it counts that did not come (a cut stream) is no end either.
  auto [c2, status2] = Scan("hell" + kReport, "err\n", 64);
  CHECK(!status2.has_value());
}

TEST_CASE("a report with another nonce is output like any other", "[docker][report]") {
  const std::string forged = "\x1erunner-exit guessed 0 0 0\n";
  auto [c, status] = Scan(forged + "hello\n", "", 5, true);
  CHECK(c.out == forged + "hello\n");
  CHECK(!status.has_value());
}

TEST_CASE("a tail that only looks like a report's start is handed on at the end",
          "[docker][report]") {
  auto [c, status] = Scan("data\x1erunner-ex", "", 64, true);
  CHECK(c.out == "data\x1erunner-ex");
  CHECK(!status.has_value());
}

TEST_CASE("a nonzero status is reported as it is", "[docker][report]") {
  auto [c, status] = Scan("\x1erunner-exit abc123 137 0 0\n", "", 64);
  CHECK(c.out.empty());
  REQUIRE(status.has_value());
  CHECK(*status == 137);
}

TEST_CASE("a malformed report gives no status", "[docker][report]") {
  for (const std::string bad :
       {"\x1erunner-exit abc123 x 0 0\n", "\x1erunner-exit abc123 0 0\n",
        "\x1erunner-exit abc123 999 0 0\n", "\x1erunner-exit abc123 0 0 0 junk\n"}) {
    auto [c, status] = Scan(bad, "", 64);
    CHECK(!status.has_value());
  }
}
