#include <catch2/catch.hpp>
#include <mutex>

#include "runner/queue/notify_listener.h"
#include "tests/integration/queue/queue_fixture.h"

using namespace runner::queue;
using namespace runner::queue::testing;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;
using namespace std::chrono_literals;

namespace {

struct Heard {
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> items;  // guarded by mu
  std::chrono::steady_clock::time_point last_at;           // guarded by mu

  NotifyListener::Callback Callback() {
    return [this](std::string_view channel, std::string_view payload) {
      std::lock_guard lock(mu);
      items.emplace_back(channel, payload);
      last_at = std::chrono::steady_clock::now();
    };
  }
  bool Has(std::string_view channel, std::string_view payload) {
    std::lock_guard lock(mu);
    for (const auto& [c, p] : items) {
      if (c == channel && p == payload) return true;
    }
    return false;
  }
  void Clear() {
    std::lock_guard lock(mu);
    items.clear();
  }
};

void TerminateListener(const TestDatabase& db) {
  pqxx::connection admin(runner::testing::AdminConninfo());
  pqxx::nontransaction tx(admin);
  tx.exec_params(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
      " WHERE datname = $1 AND application_name = 'runner-listener'",
      db.name());
}

}  // namespace

TEST_CASE("a submit wakes the listener at once, without waiting for a poll", "[queue][notify]") {
  TestDatabase db;
  auto store = OpenStore(db);
  Heard heard;
  NotifyListener listener(db.conninfo(), heard.Callback());
  REQUIRE(WaitFor([&] { return listener.Connected(); }, 5s, 10ms));
  // The connect itself announces "poll now" with an empty payload.
  REQUIRE(WaitFor([&] { return heard.Has(kTasksChannel, ""); }, 2s, 5ms));
  NewTask t = Echo();
  t.queue = "builds";
  auto before = std::chrono::steady_clock::now();
  REQUIRE(store->Submit(t).ok());
  REQUIRE(WaitFor([&] { return heard.Has(kTasksChannel, "builds"); }, 2s, 1ms));
  std::chrono::steady_clock::time_point at;
  {
    std::lock_guard lock(heard.mu);
    at = heard.last_at;
  }
  // The fallback poll is 1 s; a wake-up must come well before it.
  CHECK(at - before < 300ms);

  // A cancel of a running task reaches the listener on the cancel channel.
  auto claimed = store->Claim(ClaimFor({"w1"}));
  REQUIRE(claimed->size() == 1);
  REQUIRE(store->Cancel(claimed->front().id).ok());
  CHECK(WaitFor([&] { return heard.Has(kCancelChannel, claimed->front().id); }, 2s, 1ms));
}

TEST_CASE("the listener reconnects after its database connection is killed",
          "[queue][notify][restart]") {
  TestDatabase db;
  auto store = OpenStore(db);
  Heard heard;
  NotifyListener::Options options;
  options.backoff_min = 50ms;
  NotifyListener listener(db.conninfo(), heard.Callback(), options);
  REQUIRE(WaitFor([&] { return listener.Connected(); }, 5s, 10ms));
  TerminateListener(db);
  REQUIRE(WaitFor([&] { return listener.Connects() >= 2 && listener.Connected(); }, 10s, 10ms));
  heard.Clear();
  REQUIRE(store->Submit(Echo()).ok());
  CHECK(WaitFor([&] { return heard.Has(kTasksChannel, "default"); }, 2s, 5ms));
  listener.Stop();
  CHECK_FALSE(listener.Connected());
}

TEST_CASE("the store recovers when the database drops its connections", "[queue][restart]") {
  TestDatabase db;
  StoreOptions options;
  options.pool_size = 2;
  auto store = OpenStore(db, options);
  auto s = store->Submit(Echo());
  REQUIRE(s.ok());
  REQUIRE(store->Ping().ok());
  {
    pqxx::connection admin(runner::testing::AdminConninfo());
    pqxx::nontransaction tx(admin);
    tx.exec_params(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND application_name = 'runner-queue'",
        db.name());
  }
  // The first call on a dead connection may report unavailable; then it works again.
  auto first = store->Get(s->task.id);
  if (!first.ok()) CHECK(first.error().code == "unavailable");
  CHECK(WaitFor([&] { return store->Get(s->task.id).ok(); }, 5s, 10ms));
}

TEST_CASE("an unreachable database is reported as unavailable", "[queue][restart]") {
  StoreOptions options;
  options.conninfo = "host=/nonexistent-runner-socket-dir dbname=x connect_timeout=1";
  auto store = PostgresStore::Open(options);
  REQUIRE_FALSE(store.ok());
  CHECK(store.error().code == "unavailable");
}
