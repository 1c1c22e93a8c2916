#pragma once

// The one definition of the statistics every benchmark reports, so a p99 or
// a median means the same thing in every bench/results/*.json.
//
// Percentile(v, q): linear interpolation between the two closest ranks (the
// definition of numpy's default and of R's type 7), q in [0, 1]; 0 for no
// samples. Median(v) is Percentile(v, 0.5): the middle value, or the mean of
// the two middle values.
//
// Thread-safety: pure functions.

#include <algorithm>
#include <cmath>
#include <vector>

namespace runner::bench {

inline double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

inline double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }

}  // namespace runner::bench
