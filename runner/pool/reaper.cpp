#include "runner/pool/reaper.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>

#include "base/result.h"

namespace runner::pool {

using std::chrono::milliseconds;

Reaper::Reaper(queue::MembershipStore& membership, queue::RecoveryStore& recovery,
               ReaperOptions options, Clock& clock)
    : membership_(membership), recovery_(recovery), options_(std::move(options)), clock_(clock) {}

void Reaper::SetOrphanReaper(OrphanReaper reaper) {
  std::lock_guard lock(mu_);
  orphan_reaper_ = std::move(reaper);
}

void Reaper::Start() {
  if (thread_.joinable()) return;
  thread_ = std::jthread([this](std::stop_token st) { Loop(st); });
}

void Reaper::Stop() {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  thread_.join();
  thread_ = std::jthread();
}

void Reaper::ReapOwnLeftovers() {
  OrphanReaper reaper;
  {
    std::lock_guard lock(mu_);
    reaper = orphan_reaper_;
  }
  if (reaper) reaper({options_.node_id});
}

void Reaper::RunOnce() {
  OrphanReaper reaper;
  {
    std::lock_guard lock(mu_);
    reaper = orphan_reaper_;
  }
  if (reaper) {
    const auto dead_after = std::min(options_.policy.node_dead_after,
                                     std::max(milliseconds(1), options_.lease * 2 / 3));
    std::vector<std::string> nodes;
    auto dead = membership_.DeadNodeIds(dead_after);
    if (dead.ok()) nodes = *dead;
    // Never our own containers while we run (a database outage makes our
    // heartbeat look old): our leases are ours to stop.
    std::erase(nodes, options_.node_id);
    if (!nodes.empty() && !reaper(nodes)) {
      // Requeued now, their tasks would start a second attempt beside the
      // first (the chaos soak saw two running containers of one task).
      spdlog::warn(
          "reap held node_id={}: containers of dead nodes may still run; leases are requeued "
          "once they are gone",
          options_.node_id);
      return;
    }
  }
  if (!options_.reap) return;
  auto r = recovery_.Reap(options_.policy);
  if (!r.ok()) {
    spdlog::warn("reap failed node_id={} error={}", options_.node_id, ErrorText(r.error()));
  } else if (r->ran && (r->requeued || r->failed_lease_lost || r->dead_workers || r->dead_nodes)) {
    spdlog::info("reaped node_id={} requeued={} failed_lease_lost={} dead_workers={} dead_nodes={}",
                 options_.node_id, r->requeued, r->failed_lease_lost, r->dead_workers,
                 r->dead_nodes);
  }
}

void Reaper::Loop(std::stop_token stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  while (!stop.stop_requested()) {
    RunOnce();
    std::unique_lock lock(mu);
    clock_.WaitFor(cv, lock, stop, options_.interval, [] { return false; });
  }
}

}  // namespace runner::pool
