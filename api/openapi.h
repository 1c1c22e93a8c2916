#pragma once

// GET /api/v1/openapi.yaml: the REST contract (docs/openapi.yaml), embedded at
// build time by cmake/embed_file.cmake, so the contract a client downloads is
// the one this binary was built and tested against. Public like the
// dashboard's files: it holds no data.
//
// Thread-safety: immutable after static initialisation; safe from any thread.

#include <httplib.h>

#include <string_view>

namespace runner::api {

// The bytes of docs/openapi.yaml.
std::string_view OpenApiYaml();

// The handler of GET /api/v1/openapi.yaml.
void ServeOpenApi(const httplib::Request& req, httplib::Response& res);

}  // namespace runner::api
