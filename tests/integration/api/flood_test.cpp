// Connection floods (issue #20): idle and half-sent connections hold no
// thread each, have deadlines, are capped (the connection idle longest goes
// first), and a new client is answered within 1 s while they are open.
// Loopback only; every flood is bounded and ends by itself.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "tests/integration/api/api_fixture.h"

using namespace std::chrono_literals;
using runner::testing::ApiFixture;
using runner::testing::WaitFor;
using Clock = std::chrono::steady_clock;

namespace {

int ThreadsOfThisProcess() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// A connected loopback socket (-1 on failure); connect waits at most 5 s.
int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr = Loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

constexpr char kHalfHead[] = "GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Half: ";

// True once the peer closed `fd` (EOF or reset) within `wait`; an answer
// that arrives first is read and skipped.
bool ClosedByPeer(int fd, std::chrono::milliseconds wait) {
  const auto deadline = Clock::now() + wait;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count()))) <= 0) return false;
    char buf[512];
    ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r == 0) return true;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
  }
}

// A request on a fresh connection: the status line and the time to it.
std::pair<std::string, std::chrono::milliseconds> Fresh(int port, const std::string& path) {
  const auto t0 = Clock::now();
  std::string got;
  int fd = Connect(port);
  if (fd >= 0) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    char buf[512];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) got.assign(buf, static_cast<std::size_t>(n));
    ::close(fd);
  }
  return {got.substr(0, got.find("\r\n")),
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0)};
}

long ConnectionsGauge(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(5s);
  auto res = c.Get("/metrics");
  if (!res || res->status != 200) return -1;
  const std::string key = "\nrunner_api_connections ";
  auto at = res->body.find(key);
  if (at == std::string::npos) return -1;
  return std::stol(res->body.substr(at + key.size()));
}

// The flood's client side, in a forked child so its 10,000 sockets do not
// count against the server's open-files limit. Only system calls: the
// parent has threads. Reports the sockets it holds on `report`, waits until
// `stop` closes (at most max_wait_ms), reports how many the server closed
// meanwhile, and exits; the kernel closes the rest.
[[noreturn]] void FloodChild(int port, int* fds, int n, int report, int stop, int max_wait_ms) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  sockaddr_in addr = Loopback(port);
  int held = 0;
  for (int i = 0; i < n; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      break;
    }
    // Even ones send half a request head and stop; odd ones send nothing.
    if (i % 2 == 0) (void)::send(fd, kHalfHead, sizeof kHalfHead - 1, MSG_NOSIGNAL);
    fds[held++] = fd;
  }
  (void)::write(report, &held, sizeof held);
  pollfd p{stop, POLLIN, 0};
  (void)::poll(&p, 1, max_wait_ms);
  int closed = 0;
  for (int i = 0; i < held; ++i) {
    pollfd q{fds[i], POLLIN | POLLRDHUP, 0};
    if (::poll(&q, 1, 0) > 0) ++closed;
  }
  (void)::write(report, &closed, sizeof closed);
  ::_exit(0);
}

// Reads one int from `fd` within `wait`; -1 otherwise.
int ReadInt(int fd, std::chrono::milliseconds wait) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return -1;
  int v = -1;
  return ::read(fd, &v, sizeof v) == sizeof v ? v : -1;
}

}  // namespace

TEST_CASE(
    "10,000 idle and half-sent connections hold no thread each and a new client is answered "
    "within 1 s",
    "[api][flood]") {
  constexpr int kFlood = 10000;
  // Start at the usual soft limit: the server raises it to the hard limit.
  rlimit lim{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &lim) == 0);
  const rlim_t hard = lim.rlim_max;
  INFO("the open-files hard limit (" << hard << ") must leave room for the server's side of "
                                     << kFlood << " connections; raise it (ulimit -Hn)");
  REQUIRE(hard > static_cast<rlim_t>(kFlood) + 1024);
  lim.rlim_cur = 1024;
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &lim) == 0);
  // Deadlines longer than the flood: every connection is still open when
  // the new client comes.
  ApiFixture f(std::nullopt, [](runner::api::ApiOptions& o) {
    o.header_timeout = 120s;
    o.max_connections = 16384;
  });
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &lim) == 0);
  CHECK(lim.rlim_cur == hard);
  const int threads_before = ThreadsOfThisProcess();

  int report[2], stop[2];
  REQUIRE(::pipe2(report, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(stop, O_CLOEXEC) == 0);
  std::vector<int> fds(kFlood);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(report[0]);
    ::close(stop[1]);
    FloodChild(f.port(), fds.data(), kFlood, report[1], stop[0], 180000);
  }
  ::close(report[1]);
  ::close(stop[0]);
  struct Reap {  // the flood ends on every path
    pid_t pid;
    int stop, report;
    ~Reap() {
      if (stop >= 0) ::close(stop);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      ::close(report);
    }
  } reap{child, stop[1], report[0]};

  const auto t0 = Clock::now();
  const int held = ReadInt(report[0], 240s);
  INFO("flood connections opened: "
       << held << " in "
       << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()
       << " ms");
  REQUIRE(held == kFlood);
  long open = 0;
  REQUIRE(WaitFor(
      [&] {
        open = ConnectionsGauge(f.port());
        return open >= kFlood;
      },
      20s, 100ms));

  const int threads_during = ThreadsOfThisProcess();
  auto [status, ms] = Fresh(f.port(), "/healthz");
  const auto t1 = Clock::now();
  httplib::Client api("127.0.0.1", f.port());
  api.set_read_timeout(5s);
  auto res = api.Get("/api/v1/status");
  const auto api_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t1);
  const int threads_after = ThreadsOfThisProcess();

  // The child reports how many of its sockets the server closed meanwhile.
  ::close(reap.stop);
  reap.stop = -1;
  const int closed = ReadInt(report[0], 30s);

  WARN("flood: " << held << " connections, server gauge " << open << ", threads " << threads_before
                 << " before / " << threads_during << " during / " << threads_after
                 << " after the new clients; /healthz " << ms.count() << " ms, /api/v1/status "
                 << api_ms.count() << " ms; closed by the server: " << closed);
  CHECK(status == "HTTP/1.1 200 OK");
  CHECK(ms < 1000ms);
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(api_ms < 1000ms);
  // A thread per connection would add 10,000; the I/O thread holds them all.
  CHECK(threads_during - threads_before <= 8);
  CHECK(threads_after - threads_before <= 8);
  CHECK(closed == 0);  // held, not dropped
}

TEST_CASE("at the connection cap a new client closes the connection that waited longest",
          "[api][flood]") {
  ApiFixture f(std::nullopt, [](runner::api::ApiOptions& o) {
    o.http_threads = 2;
    o.max_streams = 2;
    o.max_connections = 260;
  });
  struct Sockets {
    std::vector<int> fds;
    ~Sockets() {
      for (int fd : fds) ::close(fd);
    }
  } s;
  for (int i = 0; i < 260; ++i) {
    int fd = Connect(f.port());
    REQUIRE(fd >= 0);
    if (i % 2 == 0) (void)::send(fd, kHalfHead, sizeof kHalfHead - 1, MSG_NOSIGNAL);
    s.fds.push_back(fd);
  }
  // The cap is reached: the new client gets its answer, the oldest idle goes.
  auto [status, ms] = Fresh(f.port(), "/healthz");
  CHECK(status == "HTTP/1.1 200 OK");
  CHECK(ms < 1000ms);
  CHECK(ClosedByPeer(s.fds[0], 2s));
  // At the cap again (the answered client has gone): the next oldest goes.
  s.fds.push_back(Connect(f.port()));
  REQUIRE(s.fds.back() >= 0);
  auto [status2, ms2] = Fresh(f.port(), "/healthz");
  CHECK(status2 == "HTTP/1.1 200 OK");
  CHECK(ClosedByPeer(s.fds[1], 2s));
  for (std::size_t i = 4; i < s.fds.size(); ++i) {
    INFO("socket " << i);
    CHECK_FALSE(ClosedByPeer(s.fds[i], 0ms));
  }
}

TEST_CASE("a request head or body that does not arrive in time closes the connection",
          "[api][flood]") {
  ApiFixture f(std::nullopt, [](runner::api::ApiOptions& o) {
    o.header_timeout = 1s;
    o.body_timeout = 1s;
    o.keep_alive_timeout = 1s;
  });
  int idle = Connect(f.port());
  int half = Connect(f.port());
  int body = Connect(f.port());
  REQUIRE(idle >= 0);
  REQUIRE(half >= 0);
  REQUIRE(body >= 0);
  (void)::send(half, kHalfHead, sizeof kHalfHead - 1, MSG_NOSIGNAL);
  const std::string post =
      "POST /api/v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      "Content-Length: 100\r\n\r\n{\"comm";
  (void)::send(body, post.data(), post.size(), MSG_NOSIGNAL);
  const auto t0 = Clock::now();
  CHECK(ClosedByPeer(idle, 4s));
  CHECK(ClosedByPeer(half, 4s));
  CHECK(ClosedByPeer(body, 4s));
  const auto took = Clock::now() - t0;
  CHECK(took >= 800ms);
  CHECK(took < 4s);
  ::close(idle);
  ::close(half);
  ::close(body);

  // The head's deadline is one deadline, not one per byte: a client that
  // drips its head a byte at a time is closed as soon.
  int drip = Connect(f.port());
  REQUIRE(drip >= 0);
  const auto t1 = Clock::now();
  bool dripped_out = false;
  for (std::size_t i = 0; i < 40 && !dripped_out; ++i) {
    (void)::send(drip, &kHalfHead[i % (sizeof kHalfHead - 1)], 1, MSG_NOSIGNAL);
    dripped_out = ClosedByPeer(drip, 100ms);
  }
  CHECK(dripped_out);
  CHECK(Clock::now() - t1 < 3s);
  ::close(drip);

  // A kept-alive connection is answered, then closed after keep_alive_timeout idle.
  int ka = Connect(f.port());
  REQUIRE(ka >= 0);
  const std::string get = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
  (void)::send(ka, get.data(), get.size(), MSG_NOSIGNAL);
  char buf[512];
  timeval tv{5, 0};
  ::setsockopt(ka, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ssize_t n = ::recv(ka, buf, sizeof buf, 0);
  REQUIRE(n > 0);
  CHECK(std::string(buf, static_cast<std::size_t>(n)).rfind("HTTP/1.1 200", 0) == 0);
  CHECK(ClosedByPeer(ka, 4s));
  ::close(ka);

  // A head over 64 KiB is answered 400 (when the client reads it before the
  // reset its unread bytes cause) and closed.
  int big = Connect(f.port());
  REQUIRE(big >= 0);
  std::string head = "GET /healthz HTTP/1.1\r\nHost: t\r\n";
  while (head.size() < 70 * 1024) head += "X-Filler: " + std::string(100, 'x') + "\r\n";
  (void)::send(big, head.data(), head.size(), MSG_NOSIGNAL);
  ::setsockopt(big, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  n = ::recv(big, buf, sizeof buf, 0);
  if (n > 0) CHECK(std::string(buf, static_cast<std::size_t>(n)).rfind("HTTP/1.1 400", 0) == 0);
  CHECK(ClosedByPeer(big, 4s));
  ::close(big);
}

TEST_CASE("a bogus Content-Length is answered and its connection closed, not held",
          "[api][flood]") {
  ApiFixture f;
  for (const std::string length : {"-1", "99999999999999", "12abc"}) {
    INFO("Content-Length: " << length);
    int fd = Connect(f.port());
    REQUIRE(fd >= 0);
    const std::string req =
        "POST /api/v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: "
        "application/json\r\nContent-Length: " +
        length + "\r\n\r\n{";
    (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    REQUIRE(n > 0);
    const std::string status(buf, static_cast<std::size_t>(std::min<ssize_t>(n, 12)));
    CHECK((status == "HTTP/1.1 400" || status == "HTTP/1.1 413"));
    CHECK(ClosedByPeer(fd, 2s));
    ::close(fd);
  }
}

TEST_CASE("half-sent bodies (chunked, over the limit, behind 100-continue) hold no thread each",
          "[api][flood]") {
  // A small worker pool (2 kept, 260 at most): a worker held per half-sent
  // body, as before, would take them all and leave the new client waiting.
  ApiFixture f(std::nullopt, [](runner::api::ApiOptions& o) {
    o.http_threads = 2;
    o.max_streams = 2;
    o.body_timeout = 3s;
  });
  constexpr int kEach = 300;
  struct Sockets {
    std::vector<int> fds;
    ~Sockets() {
      for (int fd : fds) ::close(fd);
    }
  } chunked, over, expect;
  const std::string post =
      "POST /api/v1/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n";
  const std::string chunked_req = post + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"com";
  const std::string over_req = post + "Content-Length: 2000000\r\n\r\n{\"command\":[\"echo\",\"";
  const std::string expect_req = post + "Content-Length: 30\r\nExpect: 100-continue\r\n\r\n";
  const int threads_before = ThreadsOfThisProcess();
  for (int i = 0; i < kEach; ++i) {
    for (auto [sockets, req] : {std::pair{&chunked, &chunked_req}, std::pair{&over, &over_req},
                                std::pair{&expect, &expect_req}}) {
      int fd = Connect(f.port());
      REQUIRE(fd >= 0);
      (void)::send(fd, req->data(), req->size(), MSG_NOSIGNAL);
      sockets->fds.push_back(fd);
    }
  }
  // What each got, from the server's I/O thread, while its body is unsent.
  auto first_line = [](int fd) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string got;
    char c = 0;
    while (got.size() < 200 && ::recv(fd, &c, 1, 0) == 1 && c != '\n') got += c;
    if (!got.empty() && got.back() == '\r') got.pop_back();
    return got;
  };
  CHECK(first_line(chunked.fds.back()) == "HTTP/1.1 400 Bad Request");
  CHECK(first_line(over.fds.back()) == "HTTP/1.1 413 Payload Too Large");
  CHECK(first_line(expect.fds.back()) == "HTTP/1.1 100 Continue");

  const int threads_during = ThreadsOfThisProcess();
  auto [status, ms] = Fresh(f.port(), "/healthz");
  WARN("half-sent bodies: " << 3 * kEach << " connections, threads " << threads_before
                            << " before / " << threads_during << " during; /healthz " << ms.count()
                            << " ms");
  CHECK(status == "HTTP/1.1 200 OK");
  CHECK(ms < 1000ms);
  CHECK(threads_during - threads_before <= 8);

  // The one that waited for 100 Continue sends its body and gets its task.
  const std::string body = R"({"command":["true"]}          )";
  REQUIRE(body.size() == 30);
  (void)::send(expect.fds.front(), body.data(), body.size(), MSG_NOSIGNAL);
  std::string line = first_line(expect.fds.front());
  if (line == "HTTP/1.1 100 Continue") {
    (void)first_line(expect.fds.front());  // the blank line after it
    line = first_line(expect.fds.front());
  }
  CHECK(line == "HTTP/1.1 201 Created");
  // The rest never send their bodies: closed after body_timeout, by the server.
  CHECK(ClosedByPeer(expect.fds.back(), 6s));
  CHECK(ClosedByPeer(over.fds.back(), 6s));
  CHECK(ClosedByPeer(chunked.fds.back(), 6s));
}
