#include "tests/support/contract_client.h"

#include <stdexcept>

#include "tests/support/openapi_contract.h"

namespace runner::testing {

ContractClient::ContractClient(const std::string& host, int port) : client_(host, port) {}

httplib::Result ContractClient::Get(const std::string& path, const httplib::Headers& headers) {
  return Checked("GET", path, client_.Get(path, headers));
}

httplib::Result ContractClient::Post(const std::string& path, const std::string& body,
                                     const std::string& content_type) {
  return Checked("POST", path, client_.Post(path, body, content_type));
}

httplib::Result ContractClient::Post(const std::string& path, const httplib::Headers& headers,
                                     const std::string& body, const std::string& content_type) {
  return Checked("POST", path, client_.Post(path, headers, body, content_type));
}

httplib::Result ContractClient::Put(const std::string& path, const std::string& body,
                                    const std::string& content_type) {
  return Checked("PUT", path, client_.Put(path, body, content_type));
}

httplib::Result ContractClient::Delete(const std::string& path) {
  return Checked("DELETE", path, client_.Delete(path));
}

httplib::Result ContractClient::Checked(const char* method, const std::string& path,
                                        httplib::Result res) {
  if (!res) return res;  // no answer: nothing to check; the test sees the error
  std::string why = OpenApiContract::Project().CheckResponse(
      method, path, res->status, res->get_header_value("Content-Type"), res->body);
  if (!why.empty()) {
    throw std::runtime_error("the answer breaks docs/openapi.yaml: " + why);
  }
  return res;
}

}  // namespace runner::testing
