#pragma once

// ULIDs (https://github.com/ulid/spec): 48-bit millisecond time + 80 random
// bits, Crockford base32, 26 characters, lexicographically sortable by time.
// Ids made by one process within the same millisecond stay increasing.
//
// Thread-safety: NewUlid() may be called from any thread.

#include <chrono>
#include <string>
#include <string_view>

namespace runner {

std::string NewUlid();
std::string NewUlid(std::chrono::system_clock::time_point at);
bool IsUlid(std::string_view text);

}  // namespace runner
