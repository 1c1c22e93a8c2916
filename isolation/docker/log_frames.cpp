#include "isolation/docker/log_frames.h"

#include <algorithm>
#include <string>

namespace runner::isolation::docker {

Status FrameDemuxer::Feed(std::string_view data, const FrameSink& sink) {
  while (!data.empty()) {
    if (remaining_ == 0) {
      size_t take = std::min(header_.size() - header_len_, data.size());
      std::copy_n(reinterpret_cast<const uint8_t*>(data.data()), take,
                  header_.begin() + static_cast<std::ptrdiff_t>(header_len_));
      header_len_ += take;
      data.remove_prefix(take);
      if (header_len_ < header_.size()) return {};
      header_len_ = 0;
      if (header_[0] > 3 || header_[1] != 0 || header_[2] != 0 || header_[3] != 0) {
        return MakeError("internal", "the Docker log stream has a malformed frame header (stream " +
                                         std::to_string(header_[0]) +
                                         "): was the container created with a TTY?");
      }
      stream_ = static_cast<FrameStream>(header_[0]);
      remaining_ = static_cast<uint32_t>(header_[4]) << 24 |
                   static_cast<uint32_t>(header_[5]) << 16 |
                   static_cast<uint32_t>(header_[6]) << 8 | static_cast<uint32_t>(header_[7]);
      continue;  // a zero-size frame is legal and carries nothing
    }
    size_t take = std::min<size_t>(remaining_, data.size());
    sink(stream_, data.substr(0, take));
    remaining_ -= static_cast<uint32_t>(take);
    data.remove_prefix(take);
  }
  return {};
}

}  // namespace runner::isolation::docker
