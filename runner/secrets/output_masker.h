#pragma once

// Replaces every occurrence of a task's secret values in one output stream
// (stdout or stderr) with `***` before the bytes are stored or streamed.
// Output arrives in chunks of any size, so a value may be split across two
// chunks: the masker holds back the shortest tail that could still become a
// secret (a proper prefix of one) and releases it with the next chunk or at
// Flush. Text that cannot start a secret is never held, and at most the
// longest value's length less one byte is held at any time.
//
// Values shorter than kMinSecretLength are not masked: masking "1" or "ab"
// would shred ordinary output and reveal the value by its gaps. At a position
// where several values match, the longest wins. Each line (4 bytes or longer)
// of a multi-line value is a value too.
//
// Thread-safety: one masker per stream, used by one thread at a time.

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace runner::secrets {

inline constexpr std::size_t kMinSecretLength = 4;
inline constexpr std::string_view kMask = "***";

class OutputMasker {
 public:
  explicit OutputMasker(std::vector<std::string> values);

  // True when there is nothing to mask (every chunk passes through as is).
  bool empty() const { return values_.empty(); }

  // The masked bytes that can be released now; may be shorter than `chunk`
  // (a held tail) or longer (a tail held from the previous chunk).
  std::string Feed(std::string_view chunk);
  // The stream has ended: releases the held tail, masked where it matches.
  std::string Flush();
  // Bytes held back right now.
  std::size_t held() const { return pending_.size(); }

 private:
  std::string Scan(bool final);

  std::vector<std::string> values_;  // longest first
  std::array<bool, 256> first_byte_{};
  std::string pending_;      // held: a proper prefix of a value starts it
  std::size_t covered_ = 0;  // leading bytes of pending_ inside a mask already written
};

}  // namespace runner::secrets
