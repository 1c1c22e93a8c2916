#pragma once

// The Observer a worker hands to its isolator: buffers the task's output and
// writes it to the queue in batches (AppendLogs), keeps the latest usage
// sample, and reports over-limit crossings. The buffer is bounded: when it
// holds `flush_bytes` the isolator's output thread writes it out itself, which
// slows a chatty task down instead of growing memory. A pool thread calls
// FlushIfDue() every `flush_interval` so followers see output promptly.
// The task's secret values are masked (`***`) per stream before anything is
// buffered: nothing unmasked reaches the store, the tails or a follower. A
// tail that may still become a secret is held until the next chunk or
// EndOfOutput().
//
// Thread-safety: all methods may be called from any thread; flushes are
// serialised so chunks reach the store in order.

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolation/isolator.h"
#include "runner/queue/queue_store.h"
#include "runner/secrets/output_masker.h"

namespace runner::pool {

struct LogSinkOptions {
  std::size_t flush_bytes = 64 * 1024;
  std::chrono::milliseconds flush_interval{200};
};

class TaskLogSink : public isolation::Observer {
 public:
  using OverLimitHook = std::function<void(
      std::string_view resource, isolation::OverLimitAction action, std::string_view message)>;

  TaskLogSink(queue::QueueStore& store, std::string task_id, LogSinkOptions options,
              OverLimitHook on_over_limit = {}, std::vector<std::string> secret_values = {});

  void OnStarted(std::string_view isolation, std::string_view handle) override;
  void OnOutput(isolation::OutputStream stream, std::string_view data) override;
  void OnUsage(const isolation::UsageSample& sample) override;
  void OnOverLimit(std::string_view resource, isolation::OverLimitAction action,
                   std::string_view message) override;

  // The task's output has ended: releases what the maskers held back (masked
  // where it matched). Call before the last Flush.
  void EndOfOutput();
  // Writes whatever is buffered. Returns the store's status of the last write.
  Status Flush();
  // Flushes when something has waited `flush_interval`.
  void FlushIfDue(std::chrono::steady_clock::time_point now);

  std::optional<isolation::UsageSample> LastUsage() const;
  int64_t PeakMemory() const;
  std::string Handle() const;
  const std::string& task_id() const { return task_id_; }

 private:
  queue::QueueStore& store_;
  const std::string task_id_;
  const LogSinkOptions options_;
  OverLimitHook on_over_limit_;

  void AppendLocked(isolation::OutputStream stream, std::string_view data);

  std::mutex flush_mu_;  // held across a write so chunks stay in order
  mutable std::mutex mu_;
  std::vector<queue::LogChunk> pending_;                    // guarded by mu_
  std::size_t pending_bytes_ = 0;                           // guarded by mu_
  std::chrono::steady_clock::time_point oldest_pending_{};  // guarded by mu_
  int64_t next_seq_ = 1;                                    // guarded by mu_
  std::optional<isolation::UsageSample> last_usage_;        // guarded by mu_
  int64_t peak_memory_ = 0;                                 // guarded by mu_
  std::string handle_;                                      // guarded by mu_
  secrets::OutputMasker stdout_masker_;                     // guarded by mu_
  secrets::OutputMasker stderr_masker_;                     // guarded by mu_
};

}  // namespace runner::pool
