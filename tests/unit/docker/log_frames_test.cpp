#include "isolation/docker/log_frames.h"

#include <catch2/catch.hpp>
#include <string>
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
