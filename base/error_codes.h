#pragma once

// Every error code the API answers with, in one list: the request errors
// (`{"error":{"code","message"}}` with the HTTP status given here) and the
// codes of a task's `error` field (no HTTP status: they describe how a task
// ended). `Error::code` (base/result.h) holds one of these; a new code is
// added here first, with its status, and documented in docs/api.md.
//
// Thread-safety: constants only.

#include <array>
#include <string_view>

namespace runner::errc {

// Request errors.
inline constexpr char kBadRequest[] = "bad_request";
inline constexpr char kValidationFailed[] = "validation_failed";
inline constexpr char kUnauthorized[] = "unauthorized";
inline constexpr char kNotFound[] = "not_found";
inline constexpr char kConflict[] = "conflict";
inline constexpr char kPayloadTooLarge[] = "payload_too_large";
inline constexpr char kInternal[] = "internal";
inline constexpr char kUnavailable[] = "unavailable";

// How a task ended (its `error.code`); also the codes isolators report.
inline constexpr char kNonzeroExit[] = "nonzero_exit";
inline constexpr char kOomKilled[] = "oom_killed";
inline constexpr char kTimedOut[] = "timed_out";
inline constexpr char kCancelled[] = "cancelled";
inline constexpr char kImageNotFound[] = "image_not_found";
inline constexpr char kIsolationUnavailable[] = "isolation_unavailable";
inline constexpr char kLeaseLost[] = "lease_lost";
inline constexpr char kOverLimit[] = "over_limit";
inline constexpr char kDependencyFailed[] = "dependency_failed";
// The node's secret key cannot open the task's secrets (another key sealed
// them, or the blob was altered): the task fails rather than run without them.
inline constexpr char kSecretsUnavailable[] = "secrets_unavailable";

struct ErrorCodeInfo {
  std::string_view code;
  int http_status;  // 0: a task outcome, never a request's answer
};

inline constexpr std::array kErrorCodes = {
    ErrorCodeInfo{kBadRequest, 400},     ErrorCodeInfo{kValidationFailed, 400},
    ErrorCodeInfo{kUnauthorized, 401},   ErrorCodeInfo{kNotFound, 404},
    ErrorCodeInfo{kConflict, 409},       ErrorCodeInfo{kPayloadTooLarge, 413},
    ErrorCodeInfo{kInternal, 500},       ErrorCodeInfo{kUnavailable, 503},
    ErrorCodeInfo{kNonzeroExit, 0},      ErrorCodeInfo{kOomKilled, 0},
    ErrorCodeInfo{kTimedOut, 0},         ErrorCodeInfo{kCancelled, 0},
    ErrorCodeInfo{kImageNotFound, 0},    ErrorCodeInfo{kIsolationUnavailable, 0},
    ErrorCodeInfo{kLeaseLost, 0},        ErrorCodeInfo{kOverLimit, 0},
    ErrorCodeInfo{kDependencyFailed, 0}, ErrorCodeInfo{kSecretsUnavailable, 0},
};

// The HTTP status a request error with `code` answers with: 500 for a code
// that is not a request error (an internal failure surfaced as it is).
constexpr int HttpStatusFor(std::string_view code) {
  for (const auto& info : kErrorCodes) {
    if (info.code == code && info.http_status != 0) return info.http_status;
  }
  return 500;
}

}  // namespace runner::errc
