#include "api/http_workers.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <mutex>

#include "tests/support/services.h"

using namespace std::chrono_literals;

TEST_CASE("long-lived jobs grow the pool up to its cap and never past it", "[api][threads]") {
  runner::api::HttpWorkers pool(2, 5, 100);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> running{0}, finished{0};
  for (int i = 0; i < 8; ++i) {
    pool.enqueue([&] {
      ++running;
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return release; });
      --running;
      ++finished;
    });
  }
  // Five run at once (the cap); three wait for a free thread.
  REQUIRE(runner::testing::WaitFor([&] { return running.load() == 5; }, 5s));
  std::this_thread::sleep_for(50ms);
  CHECK(running.load() == 5);
  CHECK(pool.threads() == 5);
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  CHECK(runner::testing::WaitFor([&] { return finished.load() == 8; }, 5s));
  pool.shutdown();
  CHECK(pool.threads() == 0);
}

TEST_CASE("a short job runs at once on a core thread", "[api][threads]") {
  runner::api::HttpWorkers pool(2, 4, 10);
  std::atomic<bool> ran{false};
  pool.enqueue([&] { ran = true; });
  CHECK(runner::testing::WaitFor([&] { return ran.load(); }, 2s));
  CHECK(pool.threads() == 2);
}
