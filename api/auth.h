#pragma once

// Bearer-token checks and the listen-address policy of the API (docs/api.md, Auth).
// The token is compared in constant time so its bytes cannot be guessed from
// response timings.
//
// Thread-safety: pure functions.

#include <optional>
#include <string>
#include <string_view>

#include "base/result.h"

namespace runner::api {

// Constant-time for equal-length inputs; the length itself is not secret.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// True when `authorization` is "Bearer <token>" (scheme case-insensitive).
bool BearerMatches(std::string_view authorization, std::string_view token);

struct ListenAddress {
  std::string host;  // without IPv6 brackets
  int port = 0;
};

// "HOST:PORT", "[::1]:PORT" or ":PORT" (all interfaces). validation_failed with
// a message showing the expected form otherwise.
Result<ListenAddress> ParseListen(std::string_view listen);

// 127.0.0.0/8, ::1 and "localhost".
bool IsLoopback(std::string_view host);

// A listen address the server may bind: well formed, and loopback unless a
// token is set. validation_failed saying how to fix it otherwise. Checked at
// start before anything else is created, and again by ApiServer::Start.
Status CheckListen(std::string_view listen, const std::optional<std::string>& api_token);

}  // namespace runner::api
