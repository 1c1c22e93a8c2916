#pragma once

// A unix-socket proxy a test controls, in front of a real daemon (dockerd):
// Close() makes the daemon "go away" for whoever talks through the proxy (new
// connections fail, live ones are cut) without touching the shared daemon;
// Open() brings it back at the same path.
//
// Thread-safety: Open()/Close() from the test thread; the proxy runs its own
// accept and pump threads, all joined by Close() and the destructor.

#include <atomic>
#include <filesystem>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace runner::testing {

class SocketProxy {
 public:
  // Listens at `path`, forwards each connection to the unix socket `target`.
  SocketProxy(std::filesystem::path path, std::string target);
  ~SocketProxy();
  SocketProxy(const SocketProxy&) = delete;
  SocketProxy& operator=(const SocketProxy&) = delete;

  // "unix://<path>", for --docker-host.
  std::string host() const { return "unix://" + path_.string(); }
  // Throws std::runtime_error when the path cannot be bound.
  void Open();
  void Close();

 private:
  void AcceptLoop();
  void Pump(int a, int b);

  std::filesystem::path path_;
  std::string target_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> live_;         // guarded by mu_
  std::list<std::thread> pumps_;  // guarded by mu_
};

// The path of /var/run/docker.sock, or of RUNNER_TEST_DOCKER_HOST's socket.
std::string DockerSocketPath();

}  // namespace runner::testing
