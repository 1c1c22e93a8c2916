#include "tests/support/socket_proxy.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

#include "tests/support/services.h"

namespace runner::testing {
namespace {

int ConnectUnix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

SocketProxy::SocketProxy(std::filesystem::path path, std::string target)
    : path_(std::move(path)), target_(std::move(target)) {}

SocketProxy::~SocketProxy() { Close(); }

void SocketProxy::Open() {
  Close();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path_.string().copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  ::unlink(path_.c_str());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 64) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot listen on " + path_.string());
  }
  listen_fd_ = fd;
  stopping_ = false;
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

void SocketProxy::Close() {
  if (listen_fd_ < 0) return;
  stopping_ = true;
  acceptor_.join();
  ::close(listen_fd_);
  listen_fd_ = -1;
  ::unlink(path_.c_str());
  std::list<std::thread> pumps;
  {
    std::lock_guard lock(mu_);
    for (int fd : live_) ::shutdown(fd, SHUT_RDWR);
    pumps.swap(pumps_);
  }
  for (auto& t : pumps) t.join();
}

void SocketProxy::AcceptLoop() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    int upstream = ConnectUnix(target_);
    if (upstream < 0) {
      ::close(client);
      continue;
    }
    std::lock_guard lock(mu_);
    live_.push_back(client);
    live_.push_back(upstream);
    pumps_.emplace_back([this, client, upstream] { Pump(client, upstream); });
  }
}

void SocketProxy::Pump(int a, int b) {
  // Each direction ends on its own, as on a real socket: a client that
  // half-closes (the Docker attach stream ends the task's stdin that way)
  // still reads what the other side sends until that side ends too.
  char buf[65536];
  pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
  bool reading[2] = {true, true};
  bool failed = false;
  while ((reading[0] || reading[1]) && !failed && !stopping_) {
    // A direction that ended is left out (poll ignores a negative fd; a
    // hung-up one would wake it at once, again and again).
    fds[0].fd = reading[0] ? a : -1;
    fds[1].fd = reading[1] ? b : -1;
    if (::poll(fds, 2, 50) <= 0) continue;
    for (int i = 0; i < 2 && !failed; ++i) {
      if (!reading[i] || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
      int to = i == 0 ? b : a;
      if (n == 0) {
        reading[i] = false;
        ::shutdown(to, SHUT_WR);  // pass the end on
        continue;
      }
      if (n < 0) {
        failed = true;
        break;
      }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) {
          failed = true;
          break;
        }
        off += w;
      }
    }
  }
  std::lock_guard lock(mu_);
  live_.erase(std::remove(live_.begin(), live_.end(), a), live_.end());
  live_.erase(std::remove(live_.begin(), live_.end(), b), live_.end());
  ::close(a);
  ::close(b);
}

std::string DockerSocketPath() {
  std::string host = DockerHost();
  return host.rfind("unix://", 0) == 0 ? host.substr(7) : host;
}

}  // namespace runner::testing
