#pragma once

// The raw Engine API loop, the floor every Docker-mode figure is compared
// with: one task is create (the isolator's own container config), register
// wait?condition=next-exit, start, wait, remove, straight over the daemon's
// unix socket with nothing else (no logs stream, no stats, no image check).
// RunConcurrently() drives any per-task function from N threads over a fixed
// number of tasks. Shared by bench/docker (isolator overhead) and bench/pool
// (end-to-end runner vs the floor), so both measure the same loop.
//
// Thread-safety: RawEngineTask may be called from any number of threads at
// once (EngineClient is thread-safe); RunConcurrently joins its threads before
// returning.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "isolation/docker/docker_isolator.h"

namespace runner::bench {

// One task through the raw loop; true when `true` exited 0. The container is
// removed on every path.
inline bool RawEngineTask(isolation::docker::EngineClient& client,
                          const isolation::docker::DockerIsolatorOptions& options,
                          const isolation::TaskSpec& spec) {
  using namespace std::chrono_literals;
  auto id = client.ContainerCreate(isolation::docker::BuildCreateConfig(spec, options, false));
  if (!id) return false;
  bool ok = false;
  if (auto wait = client.ContainerWaitBegin(*id); wait) {
    if (client.ContainerStart(*id)) {
      // `true` exits at once; the cap only guards against a wedged daemon.
      const auto deadline = std::chrono::steady_clock::now() + 120s;
      while (std::chrono::steady_clock::now() < deadline) {
        auto polled = (*wait)->Poll(100ms);
        if (!polled) break;
        if (polled->has_value()) {
          ok = **polled == 0;
          break;
        }
      }
    }
  }
  (void)client.ContainerRemove(*id, true);
  return ok;
}

struct Round {
  std::vector<double> latencies_ms;  // one per task, in completion order
  double wall_s = 0;                 // first start to last finish
  int failures = 0;
};

// Runs `tasks` calls of fn() on `concurrency` threads (each takes the next
// task until none is left); fn returns false on failure.
template <class Fn>
Round RunConcurrently(int concurrency, int tasks, Fn fn) {
  using Clock = std::chrono::steady_clock;
  Round round;
  std::mutex mu;  // guards round.latencies_ms and round.failures
  std::atomic<int> next{0};
  const auto t0 = Clock::now();
  {
    std::vector<std::jthread> threads;
    for (int w = 0; w < std::max(concurrency, 1); ++w) {
      threads.emplace_back([&] {
        while (next.fetch_add(1) < tasks) {
          const auto s = Clock::now();
          const bool ok = fn();
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - s).count();
          std::lock_guard lock(mu);
          round.latencies_ms.push_back(ms);
          if (!ok) ++round.failures;
        }
      });
    }
  }
  round.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return round;
}

}  // namespace runner::bench
