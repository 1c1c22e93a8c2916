#pragma once

// Server-sent events framing (https://html.spec.whatwg.org/#server-sent-events).
// Thread-safety: pure functions; a StreamSlot belongs to its stream.

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace runner::api {

// "id: N\nevent: NAME\ndata: ...\n\n"; a multi-line payload becomes several
// data lines, which the client joins back with '\n'.
inline std::string SseEvent(std::optional<int64_t> id, std::string_view name,
                            std::string_view data) {
  std::string out;
  if (id) out += "id: " + std::to_string(*id) + "\n";
  if (!name.empty()) {
    out += "event: ";
    out += name;
    out += "\n";
  }
  std::size_t start = 0;
  for (;;) {
    std::size_t nl = data.find('\n', start);
    out += "data: ";
    out += data.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    out += "\n";
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  out += "\n";
  return out;
}

// A comment line: ignored by clients, keeps proxies from closing the stream.
inline std::string SseComment(std::string_view text) { return ": " + std::string(text) + "\n\n"; }

inline std::string SseRetry(int millis) { return "retry: " + std::to_string(millis) + "\n\n"; }

// Releases a stream's place under the server's cap (`open`) and its
// subscription when httplib drops the response.
struct StreamSlot {
  std::atomic<int>* open = nullptr;
  std::function<void()> release;
  ~StreamSlot() {
    if (release) release();
    if (open != nullptr) open->fetch_sub(1);
  }
};

}  // namespace runner::api
