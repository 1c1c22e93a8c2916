#include <algorithm>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "runner/queue/queue_sql.h"
#include "tests/integration/queue/queue_fixture.h"

using namespace runner::queue;
using namespace runner::queue::testing;
using runner::testing::TestDatabase;
using runner::testing::WaitFor;

TEST_CASE("eight claimers share ten thousand tasks, each claimed exactly once", "[queue][claim]") {
  TestDatabase db;
  StoreOptions options;
  options.pool_size = 9;
  auto store = OpenStore(db, options);
  constexpr int kTasks = 10000;
  std::vector<NewTask> batch(1000, Echo());
  for (int i = 0; i < kTasks / 1000; ++i) {
    auto r = store->SubmitBatch(batch);
    REQUIRE(r.ok());
  }
  std::mutex mu;
  std::vector<std::string> claimed;  // guarded by mu
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::string> workers;
      for (int w = 0; w < 16; ++w)
        workers.push_back("w" + std::to_string(t) + "-" + std::to_string(w));
      int empty = 0;
      while (empty < 2) {
        auto r = store->Claim(ClaimFor(workers, "node-" + std::to_string(t)));
        if (!r.ok()) continue;  // unavailable under load: try again
        if (r->empty()) {
          ++empty;
          continue;
        }
        std::lock_guard lock(mu);
        for (const auto& task : *r) claimed.push_back(task.id);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> unique(claimed.begin(), claimed.end());
  CHECK(claimed.size() == kTasks);
  CHECK(unique.size() == kTasks);
  CHECK(Scalar(db, "SELECT count(*) FROM tasks WHERE state = 'running' AND attempt = 1") ==
        std::to_string(kTasks));
  CHECK(Scalar(db, "SELECT count(*) FROM events WHERE kind = 'task.started'") ==
        std::to_string(kTasks));
}

TEST_CASE("claims go by priority, then run_at, one task per idle worker", "[queue][claim]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask low = Echo("low");
  NewTask high = Echo("high");
  high.priority = 10;
  NewTask other_queue = Echo("other");
  other_queue.queue = "other";
  auto a = store->Submit(low);
  auto b = store->Submit(high);
  auto c = store->Submit(other_queue);
  REQUIRE((a.ok() && b.ok() && c.ok()));
  auto req = ClaimFor({"w1"});
  req.queues = {"default"};
  auto first = store->Claim(req);
  REQUIRE(first.ok());
  REQUIRE(first->size() == 1);
  CHECK(first->front().id == b->task.id);
  CHECK(first->front().state == TaskState::kRunning);
  CHECK(first->front().worker_id == "w1");
  CHECK(first->front().node_id == "node-a");
  CHECK(first->front().attempt == 1);
  CHECK(first->front().lease_expires_at.has_value());
  auto rest = store->Claim(ClaimFor({"w2", "w3", "w4"}));
  REQUIRE(rest.ok());
  CHECK(rest->size() == 2);
  std::set<std::string> owners;
  for (const auto& t : *rest) owners.insert(*t.worker_id);
  CHECK(owners.size() == 2);
}

TEST_CASE("a claim skips the isolations the node cannot run, in both claim statements",
          "[queue][claim][defer]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask docker = Echo("docker");
  docker.isolation = runner::isolation::IsolationMode::kDocker;
  docker.priority = 10;  // first in claim order
  NewTask plain = Echo("auto");
  NewTask process = Echo("process");
  process.isolation = runner::isolation::IsolationMode::kProcess;
  auto d = store->Submit(docker);
  auto a = store->Submit(plain);
  auto p = store->Submit(process);
  REQUIRE((d.ok() && a.ok() && p.ok()));

  // A docker-mode node with Docker down runs neither docker nor auto tasks.
  auto req = ClaimFor({"w1", "w2"});
  req.skip_isolations = {"docker", "auto"};
  auto claimed = store->Claim(req);
  REQUIRE(claimed.ok());
  REQUIRE(claimed->size() == 1);
  CHECK(claimed->front().id == p->task.id);

  // Finish-and-claim skips the same way; without the list it takes the rest.
  auto one = ClaimFor({"w1"});
  one.skip_isolations = {"docker"};
  auto next = store->FinishAndClaim(p->task.id, "w1", Report(TaskState::kSucceeded), one);
  REQUIRE(next.ok());
  REQUIRE(next->next.has_value());
  CHECK(next->next->id == a->task.id);
  auto rest = store->Claim(ClaimFor({"w2"}));
  REQUIRE(rest.ok());
  REQUIRE(rest->size() == 1);
  CHECK(rest->front().id == d->task.id);
}

TEST_CASE("a deferred task goes back with its attempt, says why, and waits its delay",
          "[queue][claim][defer]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto s = store->Submit(Echo());
  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  const Deferral why{TaskError{"isolation_unavailable", "the Docker daemon does not answer"},
                     std::chrono::milliseconds(800)};
  CHECK(store->Defer(s->task.id, "someone-else", why).error().code == "conflict");
  REQUIRE(store->Defer(s->task.id, "w1", why).ok());
  auto t = store->Get(s->task.id);
  CHECK(t->state == TaskState::kQueued);
  CHECK(t->attempt == 0);
  CHECK_FALSE(t->worker_id.has_value());
  REQUIRE(t->error.has_value());
  CHECK(t->error->code == "isolation_unavailable");
  CHECK(t->error->message == "the Docker daemon does not answer");
  CHECK(Scalar(db,
               "SELECT data->>'reason' || ' ' || (data->>'error') FROM events WHERE task_id = '" +
                   s->task.id + "' ORDER BY id DESC LIMIT 1") == "deferred isolation_unavailable");
  // Not before its delay; then claimed as attempt 1 again.
  auto now = store->Claim(ClaimFor({"w2"}));
  REQUIRE(now.ok());
  CHECK(now->empty());
  std::optional<Task> again;
  REQUIRE(WaitFor(
      [&] {
        auto r = store->Claim(ClaimFor({"w2"}));
        if (r.ok() && r->size() == 1) again = r->front();
        return again.has_value();
      },
      std::chrono::seconds(5)));
  CHECK(again->attempt == 1);
  // A success clears the error the deferral left.
  REQUIRE(store->Finish(s->task.id, "w2", Report(TaskState::kSucceeded)).ok());
  CHECK_FALSE(store->Get(s->task.id)->error.has_value());
}

TEST_CASE("a deferred task whose cancel was requested ends cancelled", "[queue][claim][defer]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto s = store->Submit(Echo());
  REQUIRE(store->Claim(ClaimFor({"w1"}))->size() == 1);
  REQUIRE(store->Cancel(s->task.id).ok());  // running: flagged
  REQUIRE(store
              ->Defer(s->task.id, "w1",
                      Deferral{TaskError{"isolation_unavailable", "down"},
                               std::chrono::milliseconds(1000)})
              .ok());
  CHECK(store->Get(s->task.id)->state == TaskState::kCancelled);
}

TEST_CASE("a delayed task is not claimed before its time", "[queue][claim]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask t = Echo();
  t.delay = 0.4;
  REQUIRE(store->Submit(t).ok());
  auto now = store->Claim(ClaimFor({"w1"}));
  REQUIRE(now.ok());
  CHECK(now->empty());
  CHECK(WaitFor(
      [&] {
        auto r = store->Claim(ClaimFor({"w1"}));
        return r.ok() && r->size() == 1;
      },
      std::chrono::seconds(5)));
}

TEST_CASE("a worker finishes its task and gets the next one in the same statement",
          "[queue][claim][finish_and_claim]") {
  TestDatabase db;
  auto store = OpenStore(db);
  auto first = store->Submit(Echo("first"));
  NewTask other_queue = Echo("elsewhere");
  other_queue.queue = "other";
  auto elsewhere = store->Submit(other_queue);
  auto second = store->Submit(Echo("second"));
  REQUIRE((first.ok() && elsewhere.ok() && second.ok()));
  auto req = ClaimFor({"w1"});
  req.queues = {"default"};
  auto claimed = store->Claim(req);
  REQUIRE(claimed.ok());
  REQUIRE(claimed->size() == 1);
  CHECK(claimed->front().id == first->task.id);

  auto r = store->FinishAndClaim(first->task.id, "w1", Report(TaskState::kSucceeded), req);
  REQUIRE(r.ok());
  CHECK(r->outcome == FinishOutcome::kFinished);
  REQUIRE(r->next.has_value());
  CHECK(r->next->id == second->task.id);  // its queue only
  CHECK(r->next->state == TaskState::kRunning);
  CHECK(r->next->worker_id == "w1");
  CHECK(r->next->node_id == "node-a");
  CHECK(r->next->attempt == 1);
  CHECK(r->next->lease_expires_at.has_value());
  CHECK(store->Get(first->task.id)->state == TaskState::kSucceeded);
  auto kinds = [&](const std::string& id) {
    return Scalar(
        db, "SELECT string_agg(kind, ',' ORDER BY id) FROM events WHERE task_id = '" + id + "'");
  };
  CHECK(kinds(first->task.id) == "task.queued,task.started,task.succeeded");
  CHECK(kinds(second->task.id) == "task.queued,task.started");

  // Nothing left in the queue: finished, no next.
  auto last = store->FinishAndClaim(second->task.id, "w1", Report(TaskState::kSucceeded), req);
  REQUIRE(last.ok());
  CHECK(last->outcome == FinishOutcome::kFinished);
  CHECK_FALSE(last->next.has_value());
  // A second finish of the same task: the lease is gone, nothing is written.
  auto again = store->FinishAndClaim(second->task.id, "w1", Report(TaskState::kFailed), req);
  REQUIRE(again.ok());
  CHECK(again->outcome == FinishOutcome::kLeaseLost);
  CHECK(store->Get(second->task.id)->state == TaskState::kSucceeded);
}

TEST_CASE("finish-and-claim never takes back the task it retries nor a dependent it unblocks",
          "[queue][claim][finish_and_claim]") {
  TestDatabase db;
  auto store = OpenStore(db);
  NewTask flaky = Echo("flaky");
  flaky.max_attempts = 2;
  flaky.backoff = 0;  // queued again at once
  auto a = store->Submit(flaky);
  REQUIRE(a.ok());
  NewTask child = Echo("child");
  child.depends_on = {a->task.id};
  auto b = store->Submit(child);
  REQUIRE(b.ok());
  auto req = ClaimFor({"w1"});
  REQUIRE(store->Claim(req)->size() == 1);

  auto retried = store->FinishAndClaim(a->task.id, "w1", Report(TaskState::kFailed), req);
  REQUIRE(retried.ok());
  CHECK(retried->outcome == FinishOutcome::kRetrying);
  CHECK_FALSE(retried->next.has_value());  // the retry is not visible to its own statement
  auto again = store->Claim(req);
  REQUIRE(again.ok());
  REQUIRE(again->size() == 1);
  CHECK(again->front().id == a->task.id);
  CHECK(again->front().attempt == 2);

  auto done = store->FinishAndClaim(a->task.id, "w1", Report(TaskState::kSucceeded), req);
  REQUIRE(done.ok());
  CHECK(done->outcome == FinishOutcome::kFinished);
  CHECK_FALSE(done->next.has_value());  // the child waited on a task still running then
  auto child_claim = store->Claim(req);
  REQUIRE(child_claim.ok());
  REQUIRE(child_claim->size() == 1);
  CHECK(child_claim->front().id == b->task.id);
}

namespace {

// The node types of a JSON plan, depth first, as "type:relation/index".
void PlanNodes(const boost::json::value& node, std::vector<std::string>& out) {
  const auto& o = node.as_object();
  std::string entry(o.at("Node Type").as_string());
  if (const auto* idx = o.if_contains("Index Name")) entry += ":" + std::string(idx->as_string());
  out.push_back(entry);
  if (const auto* plans = o.if_contains("Plans")) {
    for (const auto& p : plans->as_array()) PlanNodes(p, out);
  }
}

// The claim's plan under the given session settings, run (and rolled back)
// so that JIT compilation, if any, shows as a "JIT" node.
std::vector<std::string> ClaimPlan(pqxx::connection& conn, const std::string& settings) {
  pqxx::work tx(conn);
  tx.exec(settings);
  tx.exec("DEALLOCATE ALL");
  tx.exec("PREPARE claim_plan AS " + std::string(sql::kClaim.text));
  auto r = tx.exec(
      "EXPLAIN (ANALYZE, FORMAT JSON) "
      "EXECUTE claim_plan('{w1,w2,w3,w4}', 'node-a', 30000, NULL, 4, NULL)");
  auto plan = boost::json::parse(r[0][0].as<std::string>()).as_array().at(0).as_object();
  std::vector<std::string> nodes;
  PlanNodes(plan.at("Plan"), nodes);
  if (plan.contains("JIT")) nodes.emplace_back("JIT");
  tx.abort();
  return nodes;
}

bool Has(const std::vector<std::string>& nodes, std::string_view node) {
  return std::find(nodes.begin(), nodes.end(), node) != nodes.end();
}

}  // namespace

TEST_CASE("a claim walks the claim index even when the statistics say the queue is empty",
          "[queue][claim][plan]") {
  TestDatabase db;
  auto store = OpenStore(db);
  {
    pqxx::connection admin(db.conninfo());
    pqxx::nontransaction tx(admin);
    // Statistics of an empty queue, as on a fresh install, kept while 20,000
    // tasks arrive (autovacuum would analyze them within a minute).
    tx.exec("ALTER TABLE tasks SET (autovacuum_enabled = false)");
    tx.exec("VACUUM ANALYZE tasks");
  }
  std::vector<NewTask> batch(1000, Echo());
  for (int i = 0; i < 20; ++i) REQUIRE(store->SubmitBatch(batch).ok());

  pqxx::connection conn(db.conninfo());
  // Control: with the generic plan alone, the planner believes the few
  // queued tasks the statistics promise: it reads every queued task and
  // sorts them rather than walking the claim index.
  auto naive = ClaimPlan(conn, "SET plan_cache_mode = force_generic_plan; SET enable_sort = on");
  REQUIRE_FALSE(Has(naive, "Index Scan:tasks_claim_idx"));
  // The store's settings: the index in claim order, stopped by the LIMIT.
  auto plan = ClaimPlan(conn, std::string(sql::kSessionPlanSettings));
  INFO("plan nodes: " << [&] {
    std::string all;
    for (const auto& n : plan) all += n + " ";
    return all;
  }());
  CHECK(Has(plan, "Index Scan:tasks_claim_idx"));
  CHECK_FALSE(Has(plan, "Bitmap Heap Scan"));
  CHECK_FALSE(Has(plan, "JIT"));
  // The claims themselves are right at that depth.
  auto claimed = store->Claim(ClaimFor({"w1", "w2"}));
  REQUIRE(claimed.ok());
  CHECK(claimed->size() == 2);
}
