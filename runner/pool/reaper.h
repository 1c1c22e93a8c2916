#pragma once

// The node's reaper: every `interval`, first the containers of dead nodes go
// (the orphan hook, DockerIsolator::ReapOrphans), then QueueStore::Reap
// requeues or fails expired leases and removes dead workers and nodes. This
// node's own leftovers (from a run before a crash) go once, in
// ReapOwnLeftovers, which the pool calls before it claims anything: a pass
// that ran beside the first claims removed the new tasks' containers too.
//
// Containers go BEFORE the leases are requeued, or a surviving node would
// start a second attempt while the dead node's container still runs the
// first. A live node renews every lease/3, so a node silent for 2/3 of the
// lease has lost (or is about to lose) every lease it holds: that is when its
// containers count as orphans.
//
// Thread-safety: SetOrphanReaper and RunOnce may be called from any thread;
// Start and Stop from the owner's.

#include <chrono>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "runner/queue/queue_store.h"

namespace runner::pool {

// Removes containers of the given (dead) nodes (DockerIsolator::ReapOrphans).
// False: some of them may still run (a removal failed, on a daemon that
// answers), so the pass must not requeue their tasks yet; the next pass tries
// again. A daemon that cannot be reached answers true: what it runs cannot
// be known from here, and holding the requeue would hold the tasks forever.
using OrphanReaper = std::function<bool(const std::vector<std::string>& node_ids)>;

struct ReaperOptions {
  std::string node_id;                       // this node: never reaped while it runs
  std::chrono::milliseconds lease{30000};    // the pool's lease
  std::chrono::milliseconds interval{5000};  // between passes
  queue::ReapPolicy policy;
  bool reap = true;  // false: only the orphan hook (another process reaps the queue)
};

class Reaper {
 public:
  // Reads dead nodes from `membership`, reaps through `recovery` (the two
  // roles of QueueStore it uses).
  Reaper(queue::MembershipStore& membership, queue::RecoveryStore& recovery, ReaperOptions options,
         Clock& clock = SystemClock());
  ~Reaper() { Stop(); }
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;

  void SetOrphanReaper(OrphanReaper reaper);
  // This node's containers, all of them orphans: call it before this node
  // runs any task. Blocks for the hook (a Docker call).
  void ReapOwnLeftovers();
  // Passes on a thread of its own until Stop(); the first at once.
  void Start();
  void Stop();
  // One pass: dead nodes' containers, then the queue.
  void RunOnce();

 private:
  void Loop(std::stop_token stop);

  queue::MembershipStore& membership_;
  queue::RecoveryStore& recovery_;
  const ReaperOptions options_;
  Clock& clock_;
  std::mutex mu_;
  OrphanReaper orphan_reaper_;  // guarded by mu_
  std::jthread thread_;
};

}  // namespace runner::pool
