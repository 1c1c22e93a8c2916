#pragma once

// Checks HTTP answers against the REST contract, docs/openapi.yaml, so a
// response that drifts from the contract fails the test that got it.
//
//   const auto& contract = runner::testing::OpenApiContract::Project();
//   std::string why = contract.CheckResponse("GET", "/api/v1/tasks?limit=3", 200,
//                                            "application/json", body);
//   // why is empty when the answer is one the contract allows
//
// An answer is allowed when its path matches a path of the contract (literal
// paths before templated ones), the method is one of that path's operations,
// the status is one of the operation's responses, the Content-Type is one of
// that response's media types, and a JSON body validates against its schema.
// A path that is no route of the contract must answer 404 with an `Error`.
//
// The schemas are checked by a small JSON Schema (2020-12) validator that
// knows the keywords docs/openapi.yaml uses: type, enum, const, properties,
// required, additionalProperties, maxProperties, items, minItems, maxItems,
// minimum, maximum, exclusiveMinimum, minLength, maxLength, pattern,
// format: date-time, anyOf, oneOf, allOf and local $ref; annotations
// (description, default, examples, ...) are ignored. Any other keyword is
// reported as an error, so the contract cannot use a rule that nothing checks.
//
// Thread-safety: immutable after construction; const methods are safe from
// any thread.

#include <boost/json.hpp>
#include <string>
#include <string_view>

namespace runner::testing {

class OpenApiContract {
 public:
  // Parses an OpenAPI document (YAML or JSON text). Throws std::runtime_error
  // when it is not a YAML mapping.
  explicit OpenApiContract(std::string_view yaml_text);

  // docs/openapi.yaml of this source tree, loaded once.
  static const OpenApiContract& Project();

  // Empty when the contract allows this answer to `method` `target` (a path,
  // optionally with a query); else what differs, naming the path in the body.
  std::string CheckResponse(std::string_view method, std::string_view target, int status,
                            std::string_view content_type, std::string_view body) const;

  // Empty when `value` is valid against components/schemas/<name>.
  std::string CheckSchema(std::string_view name, const boost::json::value& value) const;

  const boost::json::value& document() const { return doc_; }

 private:
  std::string Validate(const boost::json::value& schema, const boost::json::value& value,
                       const std::string& where, int depth) const;
  const boost::json::value* Resolve(const boost::json::value& node, std::string& error) const;

  boost::json::value doc_;
};

}  // namespace runner::testing
