#pragma once

// Writing answers, shared by the route files: JSON bodies, the error shape of
// docs/api.md (`{"error":{"code","message"}}` with the status of
// base/error_codes.h), and the checks every route makes the same way (query
// parameters, integers in a parameter or header).
//
// Thread-safety: pure functions.

#include <httplib.h>

#include <boost/json.hpp>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string_view>

#include "base/result.h"

namespace runner::api {

inline constexpr const char* kJsonType = "application/json";

void SendJson(httplib::Response& res, int status, const boost::json::value& value);
void SendError(httplib::Response& res, const Error& error);

// docs/api.md: an unknown query parameter is a 400, like an unknown field.
// The error names the first parameter of `req` not in `allowed`.
std::optional<Error> UnknownParam(const httplib::Request& req,
                                  std::initializer_list<std::string_view> allowed);

// The error for a status httplib produces itself (no route, body too large,
// bad request line).
Error ErrorForStatus(int status);

// A whole decimal int64, nothing else around it.
std::optional<int64_t> ParseInt64(std::string_view text);

}  // namespace runner::api
