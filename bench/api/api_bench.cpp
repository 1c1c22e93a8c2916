// Latency of ordinary API requests (GET /healthz, GET /api/v1/tasks?limit=5)
// on a quiet server and under attack: 1,000 SSE subscribers that never read
// and a few hundred slowloris sockets dripping request headers one byte per
// 100 ms. The chaos suite (tests/chaos/api_abuse_test.cpp) proves the server
// stays responsive under the same attack (no request fails within 2 s); the
// speed figure is measured here, since a test never asserts a speed.
//
// A real node (process isolation, PostgreSQL store, pool) behind the real
// ApiServer on loopback, in a scratch database of the test cluster.
//
//   eval "$(scripts/services start)"
//   api_bench --out bench/results/api.json [--requests 30] [--subscribers 1000] [--slow 300]

#include <httplib.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "api/server.h"
#include "bench/common/stats.h"
#include "runner/config.h"
#include "runner/metrics/registry.h"
#include "runner/node/node.h"
#include "tests/support/services.h"

namespace {

using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;
namespace json = boost::json;

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return fallback;
}

// Sockets closed on every path.
struct Sockets {
  std::vector<int> fds;
  ~Sockets() {
    for (int fd : fds) ::close(fd);
  }
  Sockets() = default;
  Sockets(const Sockets&) = delete;
  Sockets& operator=(const Sockets&) = delete;
};

int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
      errno != EINPROGRESS) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// n requests, 50 ms apart, each on a fresh connection with a 5 s timeout.
json::object Measure(int port, const std::string& path, int n) {
  std::vector<double> ms;
  int failures = 0;
  for (int i = 0; i < n; ++i) {
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(5s);
    c.set_read_timeout(5s);
    auto t0 = Steady::now();
    auto res = c.Get(path);
    ms.push_back(std::chrono::duration<double, std::milli>(Steady::now() - t0).count());
    if (!res || res->status != 200) ++failures;
    std::this_thread::sleep_for(50ms);
  }
  return json::object{{"path", path},
                      {"requests", n},
                      {"p50_ms", runner::bench::Percentile(ms, 0.5)},
                      {"p99_ms", runner::bench::Percentile(ms, 0.99)},
                      {"max_ms", runner::bench::Percentile(ms, 1.0)},
                      {"failures", failures}};
}

void RaiseFileLimit(rlim_t want) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  lim.rlim_cur = std::min(lim.rlim_max, want);
  ::setrlimit(RLIMIT_NOFILE, &lim);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out = Arg(argc, argv, "--out", "bench/results/api.json");
  const int requests = std::stoi(Arg(argc, argv, "--requests", "30"));
  const int subscribers = std::stoi(Arg(argc, argv, "--subscribers", "1000"));
  const int slow = std::stoi(Arg(argc, argv, "--slow", "300"));
  RaiseFileLimit(16384);
  try {
    runner::testing::TestDatabase db;
    runner::testing::TempDir dir;
    runner::metrics::Registry registry;
    runner::Config config;
    config.workers = 2;
    config.mode = runner::isolation::IsolationMode::kProcess;
    config.pressure = runner::PressureThresholds{100, 99, 100, 99, 100, 99};
    config.data_dir = dir.path().string();
    auto node = runner::node::Node::Create(config, db.conninfo(), registry);
    if (!node) throw std::runtime_error("node: " + node.error().message);
    if (auto st = (*node)->Start(); !st) throw std::runtime_error("start: " + st.error().message);
    runner::api::ApiOptions options;
    options.listen = "127.0.0.1:0";
    runner::api::ApiServer server(options, (*node)->store(), **node, registry);
    if (auto st = server.Start(); !st) throw std::runtime_error("api: " + st.error().message);
    const int port = server.port();
    {
      httplib::Client c("127.0.0.1", port);
      auto r = c.Post("/api/v1/tasks", R"({"command":["true"]})", "application/json");
      if (!r || r->status != 201) throw std::runtime_error("submit failed");
    }

    json::object quiet{{"healthz", Measure(port, "/healthz", requests)},
                       {"tasks", Measure(port, "/api/v1/tasks?limit=5", requests)}};

    // The attack: subscribers that never read, then slowloris sockets.
    Sockets sse;
    const std::string sse_req = "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for (int i = 0; i < subscribers; ++i) {
      int fd = Connect(port);
      if (fd < 0) break;
      sse.fds.push_back(fd);
    }
    std::this_thread::sleep_for(300ms);
    for (int fd : sse.fds) (void)::send(fd, sse_req.data(), sse_req.size(), MSG_NOSIGNAL);
    Sockets lor;
    for (int i = 0; i < slow; ++i) {
      int fd = Connect(port);
      if (fd < 0) break;
      lor.fds.push_back(fd);
    }
    std::atomic<bool> stop{false};
    std::thread drip([&] {
      const std::string head = "GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
      std::size_t pos = 0;
      while (!stop) {
        char ch = pos < head.size() ? head[pos] : 'a';
        for (int fd : lor.fds) (void)::send(fd, &ch, 1, MSG_NOSIGNAL);
        ++pos;
        for (int i = 0; i < 5 && !stop; ++i) std::this_thread::sleep_for(20ms);
      }
    });
    std::this_thread::sleep_for(2s);
    json::object attacked{{"healthz", Measure(port, "/healthz", requests)},
                          {"tasks", Measure(port, "/api/v1/tasks?limit=5", requests)}};
    stop = true;
    drip.join();

    json::object doc{{"benchmark", "API latency, quiet and under attack"},
                     {"attack", json::object{{"sse_subscribers_never_reading", sse.fds.size()},
                                             {"slowloris_sockets", lor.fds.size()}}},
                     {"cpus", static_cast<int64_t>(std::thread::hardware_concurrency())},
                     {"quiet", quiet},
                     {"under_attack", attacked}};
    server.Stop();
    (*node)->Shutdown(runner::StopOptions{true, std::chrono::seconds(0)});
    std::ofstream(out) << json::serialize(doc) << "\n";
    auto line = [](const char* what, const json::object& o) {
      std::printf("%-14s p50 %7.2f ms  p99 %7.2f ms  failures %lld\n", what,
                  o.at("p50_ms").to_number<double>(), o.at("p99_ms").to_number<double>(),
                  static_cast<long long>(o.at("failures").to_number<int64_t>()));
    };
    line("quiet /healthz", quiet.at("healthz").as_object());
    line("quiet tasks", quiet.at("tasks").as_object());
    line("attack /healthz", attacked.at("healthz").as_object());
    line("attack tasks", attacked.at("tasks").as_object());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "api_bench failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
