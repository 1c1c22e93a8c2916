#include "api/auth.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace runner::api {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Compare over the longer length so the loop does not stop early at a
  // mismatch; a volatile accumulator keeps the compiler from short-cutting.
  std::size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  return diff == 0;
}

bool BearerMatches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() < kScheme.size()) return false;
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) return false;
  }
  std::string_view presented = authorization.substr(kScheme.size());
  while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
  while (!presented.empty() && presented.back() == ' ') presented.remove_suffix(1);
  return !token.empty() && ConstantTimeEquals(presented, token);
}

Result<ListenAddress> ParseListen(std::string_view listen) {
  auto bad = [&] {
    return MakeError("validation_failed",
                     "listen: '" + std::string(listen) +
                         "' is not HOST:PORT; use e.g. 127.0.0.1:8080, [::1]:8080 or "
                         "0.0.0.0:8080 (port 0 picks a free port)");
  };
  ListenAddress out;
  std::string_view port_text;
  if (!listen.empty() && listen.front() == '[') {
    auto close = listen.find(']');
    if (close == std::string_view::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return bad();
    }
    out.host = std::string(listen.substr(1, close - 1));
    port_text = listen.substr(close + 2);
  } else {
    auto colon = listen.rfind(':');
    if (colon == std::string_view::npos) return bad();
    out.host = std::string(listen.substr(0, colon));
    if (out.host.find(':') != std::string::npos) return bad();
    port_text = listen.substr(colon + 1);
  }
  if (out.host.empty()) out.host = "0.0.0.0";
  int port = -1;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port < 0 || port > 65535) {
    return bad();
  }
  out.port = port;
  return out;
}

bool IsLoopback(std::string_view host) {
  if (host == "localhost") return true;
  std::string h(host);
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6) != 0;
  }
  return false;
}

Status CheckListen(std::string_view listen, const std::optional<std::string>& api_token) {
  auto addr = ParseListen(listen);
  if (!addr) return addr.error();
  if (!IsLoopback(addr->host) && (!api_token || api_token->empty())) {
    return MakeError("validation_failed",
                     "refusing to listen on " + std::string(listen) +
                         " without an API token: anyone who can reach it could run commands. "
                         "Set --api-token-file (RUNNER_API_TOKEN_FILE), --api-token "
                         "(RUNNER_API_TOKEN) or listen on 127.0.0.1");
  }
  return {};
}

}  // namespace runner::api
