#include "base/ulid.h"

#include <array>
#include <cstdint>
#include <mutex>
#include <random>

namespace runner {
namespace {

constexpr std::string_view kAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

struct State {
  std::mutex mu;
  std::mt19937_64 rng{std::random_device{}()};  // guarded by mu
  uint64_t last_ms = 0;                         // guarded by mu
  std::array<uint8_t, 10> last_random{};        // guarded by mu
};

State& GlobalState() {
  static State state;
  return state;
}

}  // namespace

std::string NewUlid(std::chrono::system_clock::time_point at) {
  auto ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count());
  std::array<uint8_t, 16> bytes{};
  {
    State& s = GlobalState();
    std::lock_guard lock(s.mu);
    if (ms <= s.last_ms) {
      // Same millisecond: increment the random part so ids stay increasing.
      ms = s.last_ms;
      for (int i = 9; i >= 0; --i) {
        if (++s.last_random[static_cast<std::size_t>(i)] != 0) break;
      }
    } else {
      s.last_ms = ms;
      for (auto& b : s.last_random) b = static_cast<uint8_t>(s.rng() & 0xff);
    }
    for (int i = 0; i < 6; ++i) {
      bytes[static_cast<std::size_t>(i)] = static_cast<uint8_t>(ms >> (40 - 8 * i));
    }
    for (std::size_t i = 0; i < 10; ++i) bytes[6 + i] = s.last_random[i];
  }
  // 128 bits, big-endian, as 26 base32 characters: 130 bits with two leading zeros.
  auto bit = [&bytes](int index) -> unsigned {
    if (index < 0) return 0;
    return (bytes[static_cast<std::size_t>(index / 8)] >> (7 - index % 8)) & 1U;
  };
  std::string out(26, '0');
  for (int i = 0; i < 26; ++i) {
    unsigned v = 0;
    for (int b = 0; b < 5; ++b) v = (v << 1) | bit(i * 5 + b - 2);
    out[static_cast<std::size_t>(i)] = kAlphabet[v];
  }
  return out;
}

std::string NewUlid() { return NewUlid(std::chrono::system_clock::now()); }

bool IsUlid(std::string_view text) {
  if (text.size() != 26) return false;
  if (text[0] > '7') return false;
  for (char c : text) {
    if (kAlphabet.find(c) == std::string_view::npos) return false;
  }
  return true;
}

}  // namespace runner
