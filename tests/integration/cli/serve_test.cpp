#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <fstream>

#include "runner/queue/postgres_store.h"
#include "tests/support/contract_client.h"
#include "tests/support/services.h"

using namespace std::chrono_literals;
using runner::testing::WaitFor;

namespace {

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// A `runner serve` child process, killed at the end of the test whatever happens.
struct ServeProcess {
  pid_t pid = -1;
  ~ServeProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  // Exit code, or -1 when it did not exit before the deadline.
  int WaitExit(std::chrono::seconds deadline) {
    int status = 0;
    bool done = WaitFor([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, deadline, 50ms);
    if (!done) return -1;
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

}  // namespace

TEST_CASE("serve drains running tasks on SIGTERM, then stops the API and exits 0", "[cli][serve]") {
  runner::testing::TestDatabase db;
  runner::testing::TempDir dir;
  const std::string bin = runner::testing::RunnerBinary();
  const int port = FreePort();
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  const std::string url = db.url();
  const std::string data_dir = dir.path().string();
  // Host pressure would hold claims on a busy test machine: thresholds at 100%
  // turn it off, so the task is sure to start before the SIGTERM.
  const std::string config = (dir.path() / "runner.yaml").string();
  std::ofstream(config) << "pressure:\n  cpuHigh: 100\n  cpuLow: 99\n  memoryHigh: 100\n"
                           "  memoryLow: 99\n  diskHigh: 100\n  diskLow: 99\n";
  ServeProcess serve;
  serve.pid = ::fork();
  REQUIRE(serve.pid >= 0);
  if (serve.pid == 0) {
    ::execl(bin.c_str(), bin.c_str(), "serve", "--listen", listen.c_str(), "--database-url",
            url.c_str(), "--data-dir", data_dir.c_str(), "--workers", "1", "--mode", "process",
            "--drain-timeout", "20", "--poll-interval", "0.1", "--config", config.c_str(),
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  runner::testing::ContractClient http("127.0.0.1", port);  // answers checked against the contract
  http.raw().set_connection_timeout(1s);
  REQUIRE(WaitFor(
      [&] {
        auto r = http.Get("/healthz");
        return r && r->status == 200;
      },
      30s, 100ms));
  auto res = http.Post("/api/v1/tasks", R"({"command":["sh","-c","sleep 2; echo done"]})",
                       "application/json");
  REQUIRE(res);
  REQUIRE(res->status == 201);
  std::string id(boost::json::parse(res->body).at("id").as_string());
  // The SIGTERM must find the task running (it sleeps 2 s), or this test
  // proves nothing about the drain.
  REQUIRE(WaitFor(
      [&] {
        auto r = http.Get(("/api/v1/tasks/" + id).c_str());
        return r && boost::json::parse(r->body).at("state").as_string() == "running";
      },
      20s, 20ms));
  ::kill(serve.pid, SIGTERM);
  CHECK(serve.WaitExit(40s) == 0);
  CHECK_FALSE(http.Get("/healthz"));  // the API is gone with the process

  runner::queue::StoreOptions options;
  options.conninfo = db.conninfo();
  auto store = runner::queue::PostgresStore::Open(options);
  REQUIRE(store.ok());
  auto task = (*store)->Get(id);
  REQUIRE(task.ok());
  // Drained, not killed: the running task finished normally.
  CHECK(task->state == runner::queue::TaskState::kSucceeded);
  CHECK(task->exit_code == 0);
}
