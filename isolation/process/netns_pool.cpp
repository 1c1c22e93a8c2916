#include "isolation/process/netns_pool.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace runner::isolation::process {
namespace {

bool LoopbackUp() {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return false;
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  bool ok = ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
  if (ok) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    ok = ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  }
  ::close(s);
  return ok;
}

}  // namespace

NetnsPool::NetnsPool(size_t target) : target_(target) {
  filler_ = std::jthread([this](std::stop_token stop) { Fill(std::move(stop)); });
}

NetnsPool::~NetnsPool() {
  filler_.request_stop();
  wake_.notify_all();
  if (filler_.joinable()) filler_.join();
  for (int fd : ready_) ::close(fd);
}

int NetnsPool::Take() {
  int fd = -1;
  {
    std::lock_guard lock(mu_);
    if (!ready_.empty()) {
      fd = ready_.back();
      ready_.pop_back();
    }
  }
  wake_.notify_one();
  return fd;
}

void NetnsPool::Fill(std::stop_token stop) {
  // This thread moves into each new namespace and back to the runner's.
  int home = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  auto give_up = [&](const char* what) {
    spdlog::info(
        "process isolation: no pre-made network namespaces ({}: {}); each sandboxed task "
        "creates its own (~1 ms more per start)",
        what, std::strerror(errno));
    std::lock_guard lock(mu_);
    broken_ = true;
  };
  if (home < 0) {
    give_up("open /proc/thread-self/ns/net");
    return;
  }
  while (!stop.stop_requested()) {
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, stop, [&] { return ready_.size() < target_; });
      if (stop.stop_requested()) break;
    }
    if (::unshare(CLONE_NEWNET) != 0) {
      give_up("unshare");
      break;
    }
    int fd = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    bool up = fd >= 0 && LoopbackUp();
    if (::setns(home, CLONE_NEWNET) != 0) {
      // Stuck in a task's namespace: this thread must not make more.
      if (fd >= 0) ::close(fd);
      give_up("setns back");
      break;
    }
    if (!up) {
      if (fd >= 0) ::close(fd);
      give_up("loopback");
      break;
    }
    std::lock_guard lock(mu_);
    ready_.push_back(fd);
  }
  ::close(home);
}

}  // namespace runner::isolation::process
