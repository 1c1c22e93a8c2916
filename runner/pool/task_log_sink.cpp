#include "runner/pool/task_log_sink.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace runner::pool {

TaskLogSink::TaskLogSink(queue::QueueStore& store, std::string task_id, LogSinkOptions options,
                         OverLimitHook on_over_limit, std::vector<std::string> secret_values)
    : store_(store),
      task_id_(std::move(task_id)),
      options_(options),
      on_over_limit_(std::move(on_over_limit)),
      stdout_masker_(secret_values),
      stderr_masker_(std::move(secret_values)) {}

void TaskLogSink::OnStarted(std::string_view isolation, std::string_view handle) {
  std::lock_guard lock(mu_);
  handle_ = std::string(isolation) + ":" + std::string(handle);
}

void TaskLogSink::AppendLocked(isolation::OutputStream stream, std::string_view data) {
  if (data.empty()) return;
  if (pending_.empty()) oldest_pending_ = std::chrono::steady_clock::now();
  if (!pending_.empty() && pending_.back().stream == stream) {
    pending_.back().data.append(data);
  } else {
    queue::LogChunk chunk;
    chunk.seq = next_seq_++;
    chunk.stream = stream;
    chunk.data = std::string(data);
    pending_.push_back(std::move(chunk));
  }
  pending_bytes_ += data.size();
}

void TaskLogSink::OnOutput(isolation::OutputStream stream, std::string_view data) {
  if (data.empty()) return;
  bool full = false;
  {
    std::lock_guard lock(mu_);
    auto& masker = stream == isolation::OutputStream::kStderr ? stderr_masker_ : stdout_masker_;
    if (masker.empty()) {
      AppendLocked(stream, data);
    } else {
      AppendLocked(stream, masker.Feed(data));
    }
    full = pending_bytes_ >= options_.flush_bytes;
  }
  // Written from the isolator's output thread: a task that prints faster than
  // the database takes it is slowed down, the buffer does not grow.
  if (full) (void)Flush();
}

void TaskLogSink::EndOfOutput() {
  std::lock_guard lock(mu_);
  AppendLocked(isolation::OutputStream::kStdout, stdout_masker_.Flush());
  AppendLocked(isolation::OutputStream::kStderr, stderr_masker_.Flush());
}

void TaskLogSink::OnUsage(const isolation::UsageSample& sample) {
  std::lock_guard lock(mu_);
  last_usage_ = sample;
  if (sample.memory > peak_memory_) peak_memory_ = sample.memory;
}

void TaskLogSink::OnOverLimit(std::string_view resource, isolation::OverLimitAction action,
                              std::string_view message) {
  if (on_over_limit_) on_over_limit_(resource, action, message);
}

Status TaskLogSink::Flush() {
  std::lock_guard flush_lock(flush_mu_);
  std::vector<queue::LogChunk> chunks;
  {
    std::lock_guard lock(mu_);
    chunks.swap(pending_);
    pending_bytes_ = 0;
  }
  if (chunks.empty()) return {};
  Status st = store_.AppendLogs(task_id_, chunks);
  if (!st.ok()) {
    // Losing output is better than stalling the task; the store marks the
    // logs truncated when it can.
    spdlog::warn("append logs failed task_id={} chunks={} code={} error={}", task_id_,
                 chunks.size(), st.error().code, st.error().message);
  }
  return st;
}

void TaskLogSink::FlushIfDue(std::chrono::steady_clock::time_point now) {
  {
    std::lock_guard lock(mu_);
    if (pending_.empty() || now - oldest_pending_ < options_.flush_interval) return;
  }
  (void)Flush();
}

std::optional<isolation::UsageSample> TaskLogSink::LastUsage() const {
  std::lock_guard lock(mu_);
  return last_usage_;
}

int64_t TaskLogSink::PeakMemory() const {
  std::lock_guard lock(mu_);
  return peak_memory_;
}

std::string TaskLogSink::Handle() const {
  std::lock_guard lock(mu_);
  return handle_;
}

}  // namespace runner::pool
