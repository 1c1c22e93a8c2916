#include "tests/support/openapi_contract.h"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <vector>

#ifndef RUNNER_SOURCE_DIR
#error "RUNNER_SOURCE_DIR must name the source tree (tests/CMakeLists.txt sets it)"
#endif

namespace runner::testing {
namespace {

namespace json = boost::json;

// YAML 1.2 core schema for plain scalars; quoted scalars stay strings.
json::value ScalarToJson(const YAML::Node& node) {
  const std::string& s = node.Scalar();
  if (node.Tag() == "!") return json::string(s);
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  int64_t i = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), i);
  if (ec == std::errc() && p == s.data() + s.size()) return i;
  static const std::regex kFloat(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  if (std::regex_match(s, kFloat)) return std::stod(s);
  return json::string(s);
}

json::value YamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json::object o;
      for (const auto& kv : node) o[kv.first.Scalar()] = YamlToJson(kv.second);
      return o;
    }
    case YAML::NodeType::Sequence: {
      json::array a;
      for (const auto& item : node) a.push_back(YamlToJson(item));
      return a;
    }
    case YAML::NodeType::Scalar:
      return ScalarToJson(node);
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return nullptr;
}

std::string TypeOf(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "boolean";
    case json::kind::int64:
    case json::kind::uint64:
      return "integer";
    case json::kind::double_: {
      double d = v.get_double();
      return std::isfinite(d) && std::floor(d) == d ? "integer" : "number";
    }
    case json::kind::string:
      return "string";
    case json::kind::array:
      return "array";
    case json::kind::object:
      return "object";
  }
  return "?";
}

bool HasType(const json::value& v, std::string_view type) {
  std::string actual = TypeOf(v);
  return actual == type || (type == "number" && actual == "integer");
}

double NumberOf(const json::value& v) { return v.to_number<double>(); }

bool JsonEquals(const json::value& a, const json::value& b) {
  if (a.is_number() && b.is_number()) return NumberOf(a) == NumberOf(b);
  return a == b;
}

// Characters (code points) of UTF-8 text, as JSON Schema counts lengths.
std::size_t CodePoints(std::string_view s) {
  std::size_t n = 0;
  for (char c : s) {
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
  }
  return n;
}

std::string Short(const json::value& v) {
  std::string s = json::serialize(v);
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

std::string Quote(std::string_view s) { return "'" + std::string(s) + "'"; }

// Keywords that only annotate: they never make a value invalid.
const std::set<std::string, std::less<>>& Annotations() {
  static const std::set<std::string, std::less<>> k = {
      "description", "title",    "default",   "examples", "example",
      "deprecated",  "readOnly", "writeOnly", "$comment",
  };
  return k;
}

std::string_view StripParams(std::string_view content_type) {
  auto semi = content_type.find(';');
  std::string_view t = content_type.substr(0, semi);
  while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
  return t;
}

bool MediaMatches(std::string_view pattern, std::string_view type) {
  if (pattern == "*/*") return true;
  if (pattern.size() > 2 && pattern.substr(pattern.size() - 2) == "/*") {
    return type.substr(0, pattern.size() - 1) == pattern.substr(0, pattern.size() - 1);
  }
  return pattern == type;
}

std::vector<std::string_view> Segments(std::string_view path) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    out.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return out;
}

// -1: no match; else the number of templated segments (fewer is a better match).
int MatchPath(std::string_view templ, std::string_view path) {
  auto t = Segments(templ);
  auto p = Segments(path);
  if (t.size() != p.size()) return -1;
  int params = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (!t[i].empty() && t[i].front() == '{' && t[i].back() == '}') {
      if (p[i].empty()) return -1;
      ++params;
    } else if (t[i] != p[i]) {
      return -1;
    }
  }
  return params;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The keywords that bound one value: "" when `value` keeps the bound, the
// difference when not, nullopt when `key` is none of them.
std::optional<std::string> CheckBound(std::string_view key, const json::value& arg,
                                      const json::value& value, const std::string& where) {
  if (key == "maxProperties" || key == "minProperties") {
    if (const json::object* o = value.if_object()) {
      auto n = static_cast<int64_t>(o->size());
      if (key == "maxProperties" ? n > arg.to_number<int64_t>() : n < arg.to_number<int64_t>()) {
        return where + ": " + std::to_string(n) + " fields breaks " + std::string(key);
      }
    }
  } else if (key == "minItems" || key == "maxItems") {
    if (const json::array* a = value.if_array()) {
      auto n = static_cast<int64_t>(a->size());
      if (key == "maxItems" ? n > arg.to_number<int64_t>() : n < arg.to_number<int64_t>()) {
        return where + ": " + std::to_string(n) + " items breaks " + std::string(key);
      }
    }
  } else if (key == "minimum" || key == "maximum" || key == "exclusiveMinimum" ||
             key == "exclusiveMaximum") {
    if (value.is_number()) {
      double v = NumberOf(value);
      double bound = NumberOf(arg);
      bool ok = key == "minimum"            ? v >= bound
                : key == "maximum"          ? v <= bound
                : key == "exclusiveMinimum" ? v > bound
                                            : v < bound;
      if (!ok)
        return where + ": " + Short(value) + " breaks " + std::string(key) + " " + Short(arg);
    }
  } else if (key == "minLength" || key == "maxLength") {
    if (value.is_string()) {
      auto n = static_cast<int64_t>(CodePoints(value.get_string()));
      if (key == "maxLength" ? n > arg.to_number<int64_t>() : n < arg.to_number<int64_t>()) {
        return where + ": " + Short(value) + " breaks " + std::string(key) + " " + Short(arg);
      }
    }
  } else if (key == "pattern") {
    if (value.is_string()) {
      std::regex re(std::string(arg.as_string()), std::regex::ECMAScript);
      if (!std::regex_search(std::string(value.get_string()), re)) {
        return where + ": " + Short(value) + " does not match " + Short(arg);
      }
    }
  } else if (key == "format") {
    if (arg.as_string() != "date-time") return where + ": unsupported format " + Short(arg);
    static const std::regex kDateTime(
        R"(^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$)");
    if (value.is_string() && !std::regex_match(std::string(value.get_string()), kDateTime)) {
      return where + ": " + Short(value) + " is not an RFC 3339 date-time";
    }
  } else {
    return std::nullopt;
  }
  return std::string();
}

}  // namespace

OpenApiContract::OpenApiContract(std::string_view yaml_text) {
  YAML::Node root = YAML::Load(std::string(yaml_text));
  if (!root.IsMap()) throw std::runtime_error("the OpenAPI document is not a YAML mapping");
  doc_ = YamlToJson(root);
}

const OpenApiContract& OpenApiContract::Project() {
  static const OpenApiContract contract = [] {
    std::string path = std::string(RUNNER_SOURCE_DIR) + "/docs/openapi.yaml";
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::stringstream text;
    text << in.rdbuf();
    return OpenApiContract(text.str());
  }();
  return contract;
}

const json::value* OpenApiContract::Resolve(const json::value& node, std::string& error) const {
  const json::value* cur = &node;
  for (int hops = 0; hops < 16; ++hops) {
    const json::object* o = cur->if_object();
    const json::value* ref = o != nullptr ? o->if_contains("$ref") : nullptr;
    if (ref == nullptr) return cur;
    if (!ref->is_string() || ref->get_string().empty() || ref->get_string()[0] != '#') {
      error = "only local $ref are supported: " + Short(*ref);
      return nullptr;
    }
    json::error_code ec;
    std::string pointer(ref->get_string().subview(1));
    cur = doc_.find_pointer(pointer, ec);
    if (cur == nullptr) {
      error = "$ref " + Short(*ref) + " does not resolve";
      return nullptr;
    }
    if (o->size() > 1) return cur;  // siblings of $ref: handled by Validate
  }
  error = "$ref chain too long";
  return nullptr;
}

std::string OpenApiContract::Validate(const json::value& schema, const json::value& value,
                                      const std::string& where, int depth) const {
  if (depth > 64) return where + ": schema nesting too deep";
  if (schema.is_bool()) return schema.get_bool() ? "" : where + ": no value is allowed here";
  const json::object* s = schema.if_object();
  if (s == nullptr) return where + ": the contract's schema is not an object: " + Short(schema);

  for (const auto& kv : *s) {
    const std::string_view key = kv.key();
    const json::value& arg = kv.value();
    std::string err;
    if (Annotations().count(key) != 0 || key.substr(0, 2) == "x-") {
      continue;
    } else if (key == "$ref") {
      std::string why;
      const json::value* target = Resolve(json::object{{"$ref", arg}}, why);
      if (target == nullptr) return where + ": " + why;
      err = Validate(*target, value, where, depth + 1);
    } else if (key == "type") {
      bool ok = false;
      std::string names;
      if (arg.is_string()) {
        ok = HasType(value, arg.get_string());
        names = std::string(arg.get_string());
      } else if (arg.is_array()) {
        for (const auto& t : arg.get_array()) {
          if (t.is_string() && HasType(value, t.get_string())) ok = true;
          names += (names.empty() ? "" : " or ") + std::string(t.as_string());
        }
      }
      if (!ok) err = where + ": expected " + names + ", got " + Short(value);
    } else if (key == "enum") {
      bool ok = false;
      for (const auto& e : arg.as_array()) ok = ok || JsonEquals(e, value);
      if (!ok) err = where + ": " + Short(value) + " is not one of " + Short(arg);
    } else if (key == "const") {
      if (!JsonEquals(arg, value))
        err = where + ": expected " + Short(arg) + ", got " + Short(value);
    } else if (key == "properties") {
      if (const json::object* o = value.if_object()) {
        for (const auto& p : arg.as_object()) {
          if (const json::value* v = o->if_contains(p.key())) {
            err = Validate(p.value(), *v, where + "." + std::string(p.key()), depth + 1);
            if (!err.empty()) break;
          }
        }
      }
    } else if (key == "required") {
      if (const json::object* o = value.if_object()) {
        for (const auto& r : arg.as_array()) {
          if (!o->contains(r.as_string())) {
            err = where + ": the required field " + Quote(r.as_string()) + " is missing";
            break;
          }
        }
      }
    } else if (key == "additionalProperties") {
      if (const json::object* o = value.if_object()) {
        const json::object* props = nullptr;
        if (const json::value* p = s->if_contains("properties")) props = p->if_object();
        for (const auto& f : *o) {
          if (props != nullptr && props->contains(f.key())) continue;
          if (arg.is_bool() && !arg.get_bool()) {
            err = where + ": the field " + Quote(f.key()) + " is not in the contract";
          } else {
            err = Validate(arg, f.value(), where + "." + std::string(f.key()), depth + 1);
          }
          if (!err.empty()) break;
        }
      }
    } else if (key == "items") {
      if (const json::array* a = value.if_array()) {
        for (std::size_t i = 0; i < a->size() && err.empty(); ++i) {
          err = Validate(arg, (*a)[i], where + "[" + std::to_string(i) + "]", depth + 1);
        }
      }
    } else if (auto bound = CheckBound(key, arg, value, where)) {
      err = *bound;
    } else if (key == "anyOf" || key == "oneOf") {
      int matched = 0;
      std::string reasons;
      for (const auto& sub : arg.as_array()) {
        std::string why = Validate(sub, value, where, depth + 1);
        if (why.empty()) {
          ++matched;
        } else {
          reasons += (reasons.empty() ? "" : "; ") + why;
        }
      }
      if (matched == 0) {
        err = where + ": matches none of " + std::string(key) + " (" + reasons + ")";
      } else if (key == "oneOf" && matched > 1) {
        err = where + ": matches " + std::to_string(matched) + " schemas of oneOf";
      }
    } else if (key == "allOf") {
      for (const auto& sub : arg.as_array()) {
        err = Validate(sub, value, where, depth + 1);
        if (!err.empty()) break;
      }
    } else {
      return where + ": the contract uses the keyword " + Quote(key) +
             ", which tests/support/openapi_contract.cpp does not check; teach it or drop it";
    }
    if (!err.empty()) return err;
  }
  return "";
}

std::string OpenApiContract::CheckSchema(std::string_view name, const json::value& value) const {
  std::string pointer = "/components/schemas/" + std::string(name);
  json::error_code ec;
  const json::value* schema = doc_.find_pointer(pointer, ec);
  if (schema == nullptr) return "no schema " + std::string(name) + " in the contract";
  return Validate(*schema, value, "$", 0);
}

std::string OpenApiContract::CheckResponse(std::string_view method, std::string_view target,
                                           int status, std::string_view content_type,
                                           std::string_view body) const {
  const std::string what =
      std::string(method) + " " + std::string(target) + " -> " + std::to_string(status) + ": ";
  std::string_view path = target.substr(0, target.find('?'));
  const json::object& paths = doc_.at("paths").as_object();
  const json::value* item = nullptr;
  int best = -1;
  for (const auto& kv : paths) {
    int m = MatchPath(kv.key(), path);
    if (m >= 0 && (best < 0 || m < best)) {
      best = m;
      item = &kv.value();
    }
  }

  const json::value* responses = nullptr;
  if (item != nullptr) {
    if (const json::value* op = item->as_object().if_contains(Lower(method))) {
      responses = op->as_object().if_contains("responses");
    }
  }
  json::value parsed;
  const json::value* response = nullptr;
  std::string why;
  if (responses == nullptr) {
    // No route of the contract: the answer must be a 404 (or a 4xx for a
    // method the path does not have) with an Error body.
    bool ok_status = item == nullptr ? status == 404 : (status >= 400 && status < 500);
    if (!ok_status) {
      return what + "no operation in the contract, so a 4xx/404 error was due";
    }
    json::error_code ec;
    parsed = json::parse(body, ec);
    if (ec) return what + "an error answer that is not JSON: " + std::string(body.substr(0, 80));
    why = CheckSchema("Error", parsed);
    return why.empty() ? "" : what + why;
  }
  const json::value* r = responses->as_object().if_contains(std::to_string(status));
  if (r == nullptr) r = responses->as_object().if_contains("default");
  if (r == nullptr) return what + "the status is not among the contract's responses";
  response = Resolve(*r, why);
  if (response == nullptr) return what + why;

  const json::value* content = response->as_object().if_contains("content");
  std::string_view type = StripParams(content_type);
  if (content == nullptr) {
    if (!body.empty()) return what + "the contract has no body here, the server sent one";
    return "";
  }
  const json::value* media = nullptr;
  for (const auto& kv : content->as_object()) {
    if (MediaMatches(kv.key(), type)) {
      media = &kv.value();
      break;
    }
  }
  if (media == nullptr) {
    return what + "Content-Type " + Quote(content_type) + " is not among " + Short(*content);
  }
  const json::value* schema = media->as_object().if_contains("schema");
  if (schema == nullptr) return "";
  if (type == "application/json") {
    json::error_code ec;
    parsed = json::parse(body, ec);
    if (ec) return what + "the body is not JSON: " + std::string(body.substr(0, 80));
  } else {
    parsed = json::string(body);
  }
  why = Validate(*schema, parsed, "$", 0);
  return why.empty() ? "" : what + why;
}

}  // namespace runner::testing
