// ContainerRemove against a scripted Engine on a unix socket: a removal that
// another caller has in progress is done only once the container is gone.

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "isolation/docker/engine_client.h"
#include "tests/support/services.h"

using namespace std::chrono_literals;
using runner::isolation::docker::EngineClient;
using runner::isolation::docker::EngineClientOptions;

namespace {

// Answers one request per connection: /_ping and /version as Engine 24
// (API 1.41); DELETE of a container 409 "removal ... already in progress";
// its inspect 200 for the first `inspects_while_running` calls, then 404.
class ScriptedEngine {
 public:
  ScriptedEngine(const std::string& path, int inspects_while_running)
      : path_(path), running_for_(inspects_while_running) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(fd_, 16) != 0) {
      throw std::runtime_error("cannot listen on " + path);
    }
    thread_ = std::thread([this] { Serve(); });
  }
  ~ScriptedEngine() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  int inspects() const { return inspects_; }

 private:
  void Serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::string req;
      char buf[4096];
      while (req.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::read(c, buf, sizeof(buf));
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
      }
      const std::string line = req.substr(0, req.find("\r\n"));
      int status = 200;
      std::string body = "{}";
      std::string extra;
      if (line.rfind("GET /_ping", 0) == 0) {
        body = "OK";
        extra = "Api-Version: 1.41\r\n";
      } else if (line.rfind("GET /version", 0) == 0) {
        body = R"({"Version":"24.0.0","ApiVersion":"1.41","MinAPIVersion":"1.12"})";
      } else if (line.rfind("DELETE ", 0) == 0) {
        status = 409;
        body = R"({"message":"removal of container c1 is already in progress"})";
      } else if (line.find("/containers/c1/json") != std::string::npos) {
        if (++inspects_ > running_for_) {
          status = 404;
          body = R"({"message":"No such container: c1"})";
        } else {
          body = R"({"Id":"c1","State":{"Status":"removing","Running":true}})";
        }
      } else {
        status = 404;
        body = R"({"message":"not scripted"})";
      }
      std::string out = "HTTP/1.1 " + std::to_string(status) +
                        " X\r\nContent-Type: " + "application/json\r\n" + extra +
                        "Content-Length: " + std::to_string(body.size()) +
                        "\r\nConnection: close\r\n\r\n" + body;
      ssize_t ignored = ::write(c, out.data(), out.size());
      (void)ignored;
      ::close(c);
    }
  }

  std::string path_;
  int running_for_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> inspects_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("a removal another caller has in progress returns once the container is gone",
          "[docker][remove]") {
  runner::testing::TempDir dir;
  const std::string sock = (dir.path() / "engine.sock").string();
  ScriptedEngine engine(sock, 3);
  EngineClientOptions o;
  o.docker_host = "unix://" + sock;
  EngineClient client(o);
  auto st = client.ContainerRemove("c1", true);
  REQUIRE(st.ok());
  // It asked until the daemon said the container no longer exists.
  CHECK(engine.inspects() == 4);
}

TEST_CASE("a removal in progress that outlasts the call's timeout is an error, not done",
          "[docker][remove]") {
  runner::testing::TempDir dir;
  const std::string sock = (dir.path() / "engine.sock").string();
  ScriptedEngine engine(sock, 1000000);
  EngineClientOptions o;
  o.docker_host = "unix://" + sock;
  o.call_timeout = 300ms;
  EngineClient client(o);
  auto st = client.ContainerRemove("c1", true);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().code == "unavailable");
  CHECK(st.error().message.find("still being removed") != std::string::npos);
  CHECK(engine.inspects() >= 2);
}
