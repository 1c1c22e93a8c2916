#include "api/json_text.h"

#include <charconv>
#include <cmath>

namespace runner::api {
namespace json = boost::json;
namespace {

void Write(const json::value& v, std::string& out) {
  switch (v.kind()) {
    case json::kind::double_: {
      const double d = v.get_double();
      if (!std::isfinite(d)) {
        out += "null";  // JSON has no NaN or infinity
        return;
      }
      // Fixed notation with the fewest digits that read back as the same
      // double. Plain to_chars picks whichever of fixed and scientific is
      // shorter, so 0.0001 came out as 1e-04 and 1e16 as 1e+16. The longest
      // fixed form of a double is about 330 characters (2.2e-308).
      char buf[400];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::fixed);
      if (ec != std::errc()) {
        out += json::serialize(v);  // unreachable for a finite double
        return;
      }
      out.append(buf, end);
      return;
    }
    case json::kind::object: {
      out += '{';
      bool first = true;
      for (const auto& kv : v.get_object()) {
        if (!first) out += ',';
        first = false;
        out += json::serialize(json::string(kv.key()));
        out += ':';
        Write(kv.value(), out);
      }
      out += '}';
      return;
    }
    case json::kind::array: {
      out += '[';
      bool first = true;
      for (const auto& item : v.get_array()) {
        if (!first) out += ',';
        first = false;
        Write(item, out);
      }
      out += ']';
      return;
    }
    default:
      out += json::serialize(v);
      return;
  }
}

}  // namespace

std::string WriteJson(const json::value& value) {
  std::string out;
  Write(value, out);
  return out;
}

}  // namespace runner::api
