#include "runner/secrets/output_masker.h"

#include <algorithm>

namespace runner::secrets {

OutputMasker::OutputMasker(std::vector<std::string> values) {
  for (auto& v : values) {
    // A multi-line value (a PEM or SSH key) is also masked line by line: a
    // task that prints one line of it, or the key with CRLF line ends, would
    // otherwise show it.
    if (v.find('\n') != std::string::npos) {
      std::size_t start = 0;
      while (start < v.size()) {
        std::size_t end = v.find('\n', start);
        if (end == std::string::npos) end = v.size();
        std::string line = v.substr(start, end - start);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.size() >= kMinSecretLength) values_.push_back(std::move(line));
        start = end + 1;
      }
    }
    if (v.size() >= kMinSecretLength) values_.push_back(std::move(v));
  }
  std::sort(values_.begin(), values_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  values_.erase(std::unique(values_.begin(), values_.end()), values_.end());
  for (const auto& v : values_) first_byte_[static_cast<unsigned char>(v[0])] = true;
}

std::string OutputMasker::Feed(std::string_view chunk) {
  if (values_.empty()) return std::string(chunk);
  pending_.append(chunk);
  return Scan(false);
}

std::string OutputMasker::Flush() {
  if (values_.empty()) return {};
  return Scan(true);
}

// Overlapping or touching-inside matches merge into one masked region, so
// two overlapping values never leave the tail of one in the clear.
//
// A tail held inside a region (a value repeated without a gap, `yes`-style,
// keeps the region open to the end of every chunk) does not hold the region
// with it: the region's `***` goes out now and covered_ remembers how many
// held bytes it still covers. Holding the whole region grew the buffer with
// every chunk for as long as the task printed (and rescanned it each time).
std::string OutputMasker::Scan(bool final) {
  const std::string buf = std::move(pending_);
  pending_.clear();
  const std::size_t n = buf.size();
  std::string out;
  out.reserve(n);
  constexpr std::size_t kNone = std::string::npos;
  std::size_t region_start = kNone;
  std::size_t region_end = 0;
  bool region_shown = false;  // its `***` went out with an earlier chunk
  if (covered_ > 0) {
    region_start = 0;
    region_end = std::min(covered_, n);
    region_shown = true;
    covered_ = 0;
  }
  std::size_t i = 0;
  while (i < n) {
    if (region_start != kNone && i >= region_end) {
      if (!region_shown) out += kMask;
      region_start = kNone;
      region_shown = false;
    }
    if (region_start == kNone && !first_byte_[static_cast<unsigned char>(buf[i])]) {
      // A run that cannot start a value passes through in one append.
      std::size_t j = i + 1;
      while (j < n && !first_byte_[static_cast<unsigned char>(buf[j])]) ++j;
      out.append(buf, i, j - i);
      i = j;
      continue;
    }
    std::size_t full = 0;
    bool hold = false;
    if (first_byte_[static_cast<unsigned char>(buf[i])]) {
      const std::string_view rest(buf.data() + i, n - i);
      for (const auto& v : values_) {  // longest first
        if (rest.size() < v.size()) {
          if (!final && std::string_view(v).substr(0, rest.size()) == rest) {
            hold = true;  // a longer value may still complete with the next chunk
            break;
          }
          continue;
        }
        if (rest.substr(0, v.size()) == v) {
          full = v.size();
          break;
        }
      }
    }
    if (hold) {
      if (region_start != kNone) {
        // Inside a region (so i < region_end): its mask goes out now.
        if (!region_shown) out += kMask;
        covered_ = region_end - i;
      }
      pending_ = buf.substr(i);
      return out;
    }
    if (full > 0) {
      if (region_start == kNone) region_start = i;
      region_end = std::max(region_end, i + full);
    } else if (region_start == kNone) {
      out += buf[i];
    }
    ++i;
  }
  if (region_start != kNone && !region_shown) out += kMask;
  return out;
}

}  // namespace runner::secrets
