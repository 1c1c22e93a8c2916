#include "isolation/docker/log_frames.h"

#include <algorithm>
#include <cstdio>
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

ExitReportScanner::ExitReportScanner(std::string nonce)
    : marker_("\x1erunner-exit " + std::move(nonce) + " ") {}

void ExitReportScanner::Feed(FrameStream stream, std::string_view data, const FrameSink& sink) {
  if (stream != FrameStream::kStdout) {
    if (stream == FrameStream::kStderr) seen_err_ += data.size();
    sink(stream, data);
    return;
  }
  if (found_) {
    if (!parsed_) {
      line_.append(data.substr(0, std::min<size_t>(data.size(), 128)));
      Parse();
    }
    return;  // nothing of the task's comes after the report
  }
  // A copy only while a held tail waits for these bytes: the log stream's
  // frames are otherwise scanned where they are.
  std::string joined;
  if (!held_.empty()) {
    joined = std::move(held_);
    joined.append(data);
    held_.clear();
    data = joined;
  }
  const std::string_view buf = data;
  if (size_t pos = buf.find(marker_); pos != std::string_view::npos) {
    if (pos > 0) sink(stream, buf.substr(0, pos));
    seen_out_ += pos;
    found_ = true;
    line_ = std::string(buf.substr(pos + marker_.size(), 128));
    Parse();
    return;
  }
  // Hold the longest tail that begins the marker.
  size_t keep = 0;
  for (size_t k = std::min(buf.size(), marker_.size() - 1); k > 0; --k) {
    if (buf.compare(buf.size() - k, k, marker_, 0, k) == 0) {
      keep = k;
      break;
    }
  }
  const size_t pass = buf.size() - keep;
  if (pass > 0) sink(stream, buf.substr(0, pass));
  seen_out_ += pass;
  held_ = std::string(buf.substr(pass));
}

void ExitReportScanner::Flush(const FrameSink& sink) {
  if (!held_.empty()) sink(FrameStream::kStdout, held_);
  seen_out_ += held_.size();
  held_.clear();
}

void ExitReportScanner::Parse() {
  const size_t nl = line_.find('\n');
  if (nl == std::string::npos) return;
  int status = -1;
  unsigned long long out = 0, err = 0;
  char extra = 0;
  const std::string fields = line_.substr(0, nl);
  if (std::sscanf(fields.c_str(), "%d %llu %llu%c", &status, &out, &err, &extra) == 3 &&
      status >= 0 && status <= 255) {
    status_ = status;
    out_bytes_ = out;
    err_bytes_ = err;
    parsed_ = true;
  }
}

std::optional<int> ExitReportScanner::Status() const {
  if (!parsed_ || seen_out_ != out_bytes_ || seen_err_ < err_bytes_) return std::nullopt;
  return status_;
}

}  // namespace runner::isolation::docker
