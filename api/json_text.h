#pragma once

// JSON text as the API writes it. Boost.JSON 1.81 prints every double in
// scientific notation (0.5 as 5E-1, 2.006296383 as 2.006296383E0): valid
// JSON, but not what a person or a shell script expects to read. This writer
// prints numbers as plain decimals (the shortest text that reads back the
// same double: 0.5, 2.006296383, 600), and everything else as Boost.JSON does.
//
// Thread-safety: pure function.

#include <boost/json.hpp>
#include <string>

namespace runner::api {

std::string WriteJson(const boost::json::value& value);

}  // namespace runner::api
