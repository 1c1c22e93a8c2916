#include "api/openapi.h"

#include <string>

namespace runner::api {

void ServeOpenApi(const httplib::Request&, httplib::Response& res) {
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  // RFC 9512 registers application/yaml.
  res.set_content(std::string(OpenApiYaml()), "application/yaml; charset=utf-8");
}

}  // namespace runner::api
