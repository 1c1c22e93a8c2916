#include "api/http_workers.h"

namespace runner::api {

HttpWorkers::HttpWorkers(std::size_t core, std::size_t max, std::size_t max_pending,
                         std::chrono::seconds idle_exit)
    : core_(core), max_(std::max(core, max)), max_pending_(max_pending), idle_exit_(idle_exit) {
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < core_; ++i) {
    std::size_t id = next_id_++;
    ++starting_;
    threads_.emplace(id, std::thread([this, id] { Work(id); }));
  }
}

HttpWorkers::~HttpWorkers() { shutdown(); }

void HttpWorkers::enqueue(std::function<void()> fn) {
  std::unique_lock lock(mu_);
  ReapExitedLocked(lock);
  space_cv_.wait(lock, [&] { return shutdown_ || jobs_.size() < max_pending_; });
  jobs_.push_back(std::move(fn));
  if (idle_ + starting_ < jobs_.size() && threads_.size() < max_ && !shutdown_) {
    std::size_t id = next_id_++;
    ++starting_;
    threads_.emplace(id, std::thread([this, id] { Work(id); }));
  }
  lock.unlock();
  work_cv_.notify_one();
}

void HttpWorkers::shutdown() {
  std::map<std::size_t, std::thread> threads;
  {
    std::lock_guard lock(mu_);
    shutdown_ = true;
  }
  work_cv_.notify_all();
  space_cv_.notify_all();
  // Threads still running jobs finish them (httplib ends SSE providers once the
  // listen socket is closed), then exit on an empty queue.
  for (;;) {
    std::map<std::size_t, std::thread> batch;
    {
      std::lock_guard lock(mu_);
      batch.swap(threads_);
      exited_.clear();
    }
    if (batch.empty()) break;
    for (auto& [id, t] : batch) t.join();
  }
}

std::size_t HttpWorkers::threads() {
  std::lock_guard lock(mu_);
  return threads_.size();
}

void HttpWorkers::ReapExitedLocked(std::unique_lock<std::mutex>& lock) {
  while (!exited_.empty()) {
    std::size_t id = exited_.front();
    exited_.pop_front();
    auto it = threads_.find(id);
    if (it == threads_.end()) continue;
    std::thread t = std::move(it->second);
    threads_.erase(it);
    lock.unlock();
    t.join();  // it has left Work() or is about to
    lock.lock();
  }
}

void HttpWorkers::Work(std::size_t id) {
  std::unique_lock lock(mu_);
  --starting_;
  for (;;) {
    ++idle_;
    bool got = work_cv_.wait_for(lock, idle_exit_, [&] { return shutdown_ || !jobs_.empty(); });
    --idle_;
    if (!jobs_.empty()) {
      auto fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      space_cv_.notify_one();
      fn();
      lock.lock();
      continue;
    }
    if (shutdown_) return;
    if (!got && threads_.size() - exited_.size() > core_) {
      exited_.push_back(id);
      return;
    }
  }
}

}  // namespace runner::api
