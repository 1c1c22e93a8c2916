#pragma once

// Demultiplexes Docker's attach/logs stream for containers created without a
// TTY: each frame is an 8-byte header [stream, 0, 0, 0, size as big-endian
// u32] followed by `size` bytes. Stream 0 = stdin, 1 = stdout, 2 = stderr,
// 3 = a daemon error (Docker writes it into the stream when it fails mid-way).
// Headers and payloads may be split across reads at any byte; payload pieces
// are handed on as they arrive, in order, never buffered whole.
//
// Thread-safety: one FrameDemuxer per stream, used by one thread.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "base/result.h"

namespace runner::isolation::docker {

enum class FrameStream : uint8_t { kStdin = 0, kStdout = 1, kStderr = 2, kError = 3 };

using FrameSink = std::function<void(FrameStream stream, std::string_view payload)>;

class FrameDemuxer {
 public:
  // Feeds the next bytes of the stream. Returns Error{"internal"} on a header
  // that is not a Docker frame header (unknown stream type or nonzero
  // padding); the demuxer should then be discarded.
  Status Feed(std::string_view data, const FrameSink& sink);
  // True when the stream stopped inside a header or a payload.
  bool MidFrame() const { return header_len_ != 0 || remaining_ != 0; }

 private:
  std::array<uint8_t, 8> header_{};
  size_t header_len_ = 0;
  uint32_t remaining_ = 0;
  FrameStream stream_ = FrameStream::kStdout;
};

// Finds the warm launcher's exit report in a warm container's output
// (isolation/docker/launcher/warm_launcher.cpp): the last bytes of its
// stdout, "\x1erunner-exit NONCE STATUS OUT_BYTES ERR_BYTES\n". Feed() passes
// the task's output on without the report (a tail that may be the report's
// beginning is held until the next bytes tell; Flush() hands it on at the
// stream's end), and Status() is the task's exit status once the report and
// all the output it counts have come. A report with another nonce is output
// like any other.
class ExitReportScanner {
 public:
  explicit ExitReportScanner(std::string nonce);
  void Feed(FrameStream stream, std::string_view data, const FrameSink& sink);
  void Flush(const FrameSink& sink);
  std::optional<int> Status() const;

 private:
  void Parse();

  std::string marker_;
  std::string held_;  // stdout bytes that may start the report
  bool found_ = false;
  std::string line_;  // the report after the marker, until its newline
  bool parsed_ = false;
  int status_ = 0;
  uint64_t out_bytes_ = 0, err_bytes_ = 0;  // as the report counts them
  uint64_t seen_out_ = 0, seen_err_ = 0;    // as they came
};

}  // namespace runner::isolation::docker
