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

}  // namespace runner::isolation::docker
