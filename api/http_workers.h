#pragma once

// The worker pool behind the HTTP server. HttpFront hands it complete
// requests, and a request that is an SSE stream keeps its worker for the
// stream's life (minutes), so a fixed pool of 8 would let 8 dashboards
// starve every other request. This pool keeps `core` threads and grows on
// demand up to `max` (core + the SSE stream cap + a margin), so `core`
// threads always remain for ordinary requests while streams are open;
// threads above `core` exit after a minute idle. Pending jobs are bounded:
// when `max_pending` wait, Enqueue blocks (the server sizes it above its
// connection cap, one job per connection at most, so it never does).
//
// Thread-safety: enqueue() is called by HttpFront's I/O thread; shutdown()
// once, by ApiServer::Stop().

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <thread>

namespace runner::api {

class HttpWorkers : public httplib::TaskQueue {
 public:
  HttpWorkers(std::size_t core, std::size_t max, std::size_t max_pending,
              std::chrono::seconds idle_exit = std::chrono::seconds(60));
  ~HttpWorkers() override;

  void enqueue(std::function<void()> fn) override;
  void shutdown() override;

  std::size_t threads();

 private:
  void Work(std::size_t id);
  void ReapExitedLocked(std::unique_lock<std::mutex>& lock);

  const std::size_t core_, max_, max_pending_;
  const std::chrono::seconds idle_exit_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable space_cv_;
  std::deque<std::function<void()>> jobs_;      // guarded by mu_
  std::map<std::size_t, std::thread> threads_;  // guarded by mu_
  std::list<std::size_t> exited_;               // guarded by mu_
  std::size_t idle_ = 0;                        // guarded by mu_
  std::size_t starting_ = 0;                    // created, not yet waiting for work; guarded by mu_
  std::size_t next_id_ = 0;                     // guarded by mu_
  bool shutdown_ = false;                       // guarded by mu_
};

}  // namespace runner::api
