#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <fstream>
#include <iterator>
#include <sstream>

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

TEST_CASE(
    "serve on a public address takes its token from RUNNER_API_TOKEN_FILE, raises its open-files "
    "limit and keeps a 0600 secret key in its data dir",
    "[cli][serve][auth]") {
  runner::testing::TestDatabase db;
  runner::testing::TempDir dir;
  const std::string bin = runner::testing::RunnerBinary();
  const int port = FreePort();
  const std::string listen = "0.0.0.0:" + std::to_string(port);
  const std::string url = db.url();
  const std::string data_dir = (dir.path() / "data").string();
  const std::string token = "tok-from-a-file-5f2c9a";
  const std::string token_file = (dir.path() / "api-token").string();
  std::ofstream(token_file) << token << "\n";
  rlimit lim{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &lim) == 0);
  const rlim_t hard = lim.rlim_max;
  REQUIRE(hard > 1024);  // or there is nothing to raise
  ServeProcess serve;
  serve.pid = ::fork();
  REQUIRE(serve.pid >= 0);
  if (serve.pid == 0) {
    rlimit low{1024, hard};
    ::setrlimit(RLIMIT_NOFILE, &low);
    ::setenv("RUNNER_API_TOKEN_FILE", token_file.c_str(), 1);
    ::unsetenv("RUNNER_API_TOKEN");
    ::execl(bin.c_str(), bin.c_str(), "serve", "--listen", listen.c_str(), "--database-url",
            url.c_str(), "--data-dir", data_dir.c_str(), "--workers", "1", "--mode", "process",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  httplib::Client http("127.0.0.1", port);
  http.set_connection_timeout(1s);
  REQUIRE(WaitFor(
      [&] {
        auto r = http.Get("/healthz");
        return r && r->status == 200;
      },
      30s, 100ms));
  // The token from the file is the one the API asks for.
  auto anonymous = http.Get("/api/v1/status");
  REQUIRE(anonymous);
  CHECK(anonymous->status == 401);
  auto wrong = http.Get("/api/v1/status", {{"Authorization", "Bearer not-" + token}});
  REQUIRE(wrong);
  CHECK(wrong->status == 401);
  auto right = http.Get("/api/v1/status", {{"Authorization", "Bearer " + token}});
  REQUIRE(right);
  CHECK(right->status == 200);

  auto read_proc = [&](const std::string& what) {
    std::ifstream in("/proc/" + std::to_string(serve.pid) + "/" + what, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Not in `ps`, nor in the process's environment: only the file's path is.
  CHECK(read_proc("cmdline").find(token) == std::string::npos);
  CHECK(read_proc("environ").find(token) == std::string::npos);
  CHECK(read_proc("environ").find(token_file) != std::string::npos);
  // The soft limit was raised to the hard one at start.
  const std::string limits = read_proc("limits");
  const auto at = limits.find("Max open files");
  REQUIRE(at != std::string::npos);
  std::istringstream row(limits.substr(at + std::string("Max open files").size()));
  std::string soft_text, hard_text;
  row >> soft_text >> hard_text;
  INFO(limits.substr(at, 80));
  CHECK(soft_text == hard_text);
  CHECK(soft_text == (hard == RLIM_INFINITY ? "unlimited" : std::to_string(hard)));
  // The node made its secret key on first start: 0600, under the data dir.
  struct stat st {};
  REQUIRE(::stat((dir.path() / "data" / "secret.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  ::kill(serve.pid, SIGTERM);
  CHECK(serve.WaitExit(40s) == 0);
}
