// Sandboxes built ahead of their task (--process-prebuilt): the pool that
// keeps them ready, and the request its waiting init reads.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <vector>

#include "isolation/process/process_isolator.h"
#include "isolation/process/spawn.h"

namespace runner::isolation::process {

// A pre-built sandbox (see PrebuiltPool): the init waits on `ctrl`.
struct Prebuilt {
  pid_t pid = -1;  // the init (a fork's waiting copy in TSan builds)
  UniqueFd pidfd, ctrl, status_read, out, err, mount_ns;
};

// The request a pre-built init waits for (layout of init/task_init.cpp's
// Request), followed by the strings.
struct PrebuiltRequest {
  unsigned magic = 0x72756e31;
  unsigned strings_size = 0;
  unsigned argc = 0, envc = 0;
  unsigned limit_count = 0;
  int cgroup_index = -1;
  struct {
    int resource;
    unsigned long long cur, max;
  } limits[8]{};
  char name[256]{};
};

// Kills a pre-built init that no task will use, and reaps it.
void Discard(Prebuilt& p);

// Sandboxes built ahead of their task (namespaces, root, network; the init
// waiting for its request), kept ready by a thread of their own so that a
// task's start pays only its per-task parts. Single use: each is handed to
// one task and never back. The thread that builds them must outlive them
// (PR_SET_PDEATHSIG is per thread): the pool's own.
class ProcessIsolator::PrebuiltPool {
 public:
  PrebuiltPool(const ProcessIsolatorOptions& options, Sandbox& sandbox, int devnull, size_t size);
  ~PrebuiltPool();

  // A live pre-built sandbox, or nullopt (none ready: the caller builds one
  // cold). When none is ready but one is being built, waits a few
  // milliseconds for it: its build is already under way on another core,
  // and a cold start would do all of it again. Dead ones met on the way are
  // reaped and replaced.
  std::optional<Prebuilt> Take();

  size_t ready();
  // Keeps `size` ready from now on; idle ones beyond it are let go.
  void Resize(size_t size);
  std::vector<pid_t> pids();
  uint64_t replaced();

 private:
  void Loop(std::stop_token stop);
  Result<Prebuilt> Build();

  const ProcessIsolatorOptions& options_;
  Sandbox& sandbox_;
  const int devnull_;
  std::mutex mu_;
  size_t size_;  // guarded by mu_
  std::condition_variable_any cv_;
  std::deque<Prebuilt> ready_;  // guarded by mu_
  uint64_t replaced_ = 0;       // guarded by mu_
  uint64_t misses_ = 0;         // guarded by mu_
  bool building_ = false;       // guarded by mu_
  std::jthread thread_;         // last: started once the rest is set
};

}  // namespace runner::isolation::process
