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
      char buf[64];
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d);
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
