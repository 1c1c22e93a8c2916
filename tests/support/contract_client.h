#pragma once

// An HTTP client for the API's tests that checks every answer it gets against
// docs/openapi.yaml (OpenApiContract) before the test sees it: an answer the
// contract does not allow throws std::runtime_error naming the difference,
// which fails the test. Same call shapes as httplib::Client for what the tests
// use; raw() reaches the unchecked client for anything else.
//
// Thread-safety: like httplib::Client, one thread at a time.

#include <httplib.h>

#include <string>

namespace runner::testing {

class ContractClient {
 public:
  ContractClient(const std::string& host, int port);

  httplib::Result Get(const std::string& path, const httplib::Headers& headers = {});
  httplib::Result Post(const std::string& path, const std::string& body,
                       const std::string& content_type);
  httplib::Result Post(const std::string& path, const httplib::Headers& headers,
                       const std::string& body, const std::string& content_type);

  httplib::Result Put(const std::string& path, const std::string& body,
                      const std::string& content_type);
  httplib::Result Delete(const std::string& path);

  httplib::Client& raw() { return client_; }

 private:
  httplib::Result Checked(const char* method, const std::string& path, httplib::Result res);

  httplib::Client client_;
};

}  // namespace runner::testing
