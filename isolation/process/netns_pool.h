#pragma once

// Pre-made empty network namespaces (only a loopback, up) for sandboxed
// process tasks: creating one costs about 1 ms on this appliance's VM, the
// better part of a short task's start, so a background thread keeps a few
// ready and a task's child joins one with setns. Each is handed out once and
// closed after the spawn (the kernel frees it with its last process): two
// tasks never share one, or they could talk over loopback or abstract unix
// sockets. Needs CAP_SYS_ADMIN (a root runner); otherwise Take() always
// returns -1 and the caller creates the namespace at clone time.
//
// Thread-safety: Take() may be called from any thread; the destructor stops
// the filler thread and closes what is left.

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

namespace runner::isolation::process {

class NetnsPool {
 public:
  explicit NetnsPool(size_t target = 4);
  ~NetnsPool();
  NetnsPool(const NetnsPool&) = delete;
  NetnsPool& operator=(const NetnsPool&) = delete;

  // A namespace fd (O_CLOEXEC) the caller owns and closes, or -1 when none is
  // ready. Wakes the filler either way.
  int Take();

 private:
  void Fill(std::stop_token stop);

  const size_t target_;
  std::mutex mu_;
  std::condition_variable_any wake_;
  std::vector<int> ready_;  // guarded by mu_
  bool broken_ = false;     // guarded by mu_: the host refused; stop trying
  std::jthread filler_;     // last: started once the rest exists
};

}  // namespace runner::isolation::process
