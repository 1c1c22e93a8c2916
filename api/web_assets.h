#pragma once

// The dashboard's files (web/), embedded at build time by cmake/embed_web.cmake.
// Immutable after static initialisation: safe to read from any thread.

#include <string_view>
#include <vector>

namespace runner::api {

struct WebAsset {
  std::string_view path;     // "/index.html", "/app.js", ...
  std::string_view content;  // raw bytes
};

const std::vector<WebAsset>& WebAssets();

}  // namespace runner::api
