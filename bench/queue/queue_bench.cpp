// Claim-and-finish throughput and claim latency of the queue, through
// PostgresStore and through the same SQL run raw with libpqxx, at 1, 4 and 16
// claimers, plus lease renewal (Heartbeat) for 100 running tasks. Works in a
// scratch database of the test cluster (tests/support's TestDatabase: made
// on the cluster of RUNNER_TEST_PGHOST, dropped at the end). Prints a
// summary; writes JSON.
//
// Groups and policies (issue #18), in the same run: claim+finish throughput
// and claim latency at 1 and 4 claimers with `depth` tasks queued, (a) in one
// unnamed group with no policy: today's plain claim, the baseline; (b) in
// `groups` groups (round-robin claims); (c) the same with caps set
// (max_running, max_running_per_group: the capped claim); (d) caps and a rate
// limit. Each run starts at `depth` queued (topped up after each); the
// settings take turns within every round (odd rounds in reverse order), and
// each setting's ratio to plain is reported both as the ratio of the median
// runs and as the median of the ratios within a round. Then the
// fairness figure: how many tasks of a `fair_big`-task group start between a
// 3-task group's submit and its last task's start, uncapped and capped.
//
//   eval "$(scripts/services start)"
//   queue_bench --out bench/results/queue_runner.json [--tasks 3000] [--depth 100000]
//     [--groups 1000] [--fair-big 10000]

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "base/ulid.h"
#include "bench/common/stats.h"
#include "runner/queue/postgres_store.h"
#include "runner/queue/queue_sql.h"
#include "tests/support/services.h"

namespace {

using namespace runner::queue;
using Steady = std::chrono::steady_clock;
namespace json = boost::json;

struct RunStats {
  std::string path;
  int claimers = 0;
  int tasks = 0;
  double seconds = 0;
  std::vector<double> claim_ms;
  std::vector<double> finish_ms;
};

using runner::bench::Percentile;

void Reset(const std::string& conninfo) {
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  tx.exec(
      "TRUNCATE tasks, task_logs, events, workers, nodes, queue_policies, queue_run_slots, "
      "queue_rate_slots CASCADE");
  tx.exec("UPDATE task_final_counts SET n = 0");
  tx.exec("VACUUM ANALYZE tasks");
}

void Fill(PostgresStore& store, int tasks) {
  NewTask t;
  t.command = {"true"};
  std::vector<NewTask> batch(500, t);
  for (int done = 0; done < tasks; done += 500) {
    auto r = store.SubmitBatch(std::span<const NewTask>(
        batch.data(), static_cast<std::size_t>(std::min(500, tasks - done))));
    if (!r.ok()) throw std::runtime_error(r.error().message);
  }
}

// `tasks` tasks spread over `groups` groups g0, g1, ... in turn, starting at
// group `first` (0 groups: the unnamed group; 1: one group named `prefix`).
void FillGroups(PostgresStore& store, int tasks, int groups, int first = 0,
                const std::string& prefix = "g") {
  NewTask t;
  t.command = {"true"};
  std::vector<NewTask> batch;
  for (int done = 0; done < tasks;) {
    batch.clear();
    for (int i = 0; i < 500 && done < tasks; ++i, ++done) {
      if (groups == 1) t.group = prefix;
      if (groups > 1) t.group = prefix + std::to_string((first + done) % groups);
      batch.push_back(t);
    }
    auto r = store.SubmitBatch(batch);
    if (!r.ok()) throw std::runtime_error(r.error().message);
  }
}

void Analyze(const std::string& conninfo) {
  pqxx::connection c(conninfo);
  pqxx::nontransaction(c).exec("VACUUM ANALYZE tasks");
}

// Each claimer is one worker: claim one task, finish it, repeat until empty.
// Separate: Claim then Finish, two round trips per task (a worker that waits
// for the claimer). Combined: FinishAndClaim, one round trip per task (a busy
// worker, what the pool does while there is a backlog); claim_ms is then the
// latency of that statement.
// stop_after > 0 (claim-then-finish only): stop once that many tasks are
// done, leaving the rest queued (the queue stays deep).
RunStats RunStore(PostgresStore& store, int claimers, int tasks, bool combined,
                  int stop_after = 0) {
  RunStats s{combined ? "runner_finish_and_claim" : "runner", claimers, tasks, 0, {}, {}};
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(claimers));
  std::vector<std::vector<double>> fin(static_cast<std::size_t>(claimers));
  std::atomic<int> finished{0};
  auto start = Steady::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < claimers; ++i) {
    threads.emplace_back([&, i] {
      auto& my_lat = lat[static_cast<std::size_t>(i)];
      auto& my_fin = fin[static_cast<std::size_t>(i)];
      ClaimRequest req;
      req.node_id = "bench";
      req.worker_ids = {"w" + std::to_string(i)};
      FinishReport rep;
      rep.state = TaskState::kSucceeded;
      rep.exit_code = 0;
      rep.isolation_used = "process";
      auto ms = [](Steady::time_point t0) {
        return std::chrono::duration<double, std::milli>(Steady::now() - t0).count();
      };
      auto t0 = Steady::now();
      auto r = store.Claim(req);
      my_lat.push_back(ms(t0));
      if (!r.ok()) throw std::runtime_error(r.error().message);
      std::optional<Task> task;
      if (!r->empty()) task = r->front();
      while (task) {
        if (combined) {
          t0 = Steady::now();
          auto f = store.FinishAndClaim(task->id, req.worker_ids[0], rep, req);
          my_lat.push_back(ms(t0));
          if (!f.ok() || f->outcome != FinishOutcome::kFinished) {
            throw std::runtime_error("finish failed");
          }
          ++finished;
          task = std::move(f->next);
        } else {
          t0 = Steady::now();
          auto f = store.Finish(task->id, req.worker_ids[0], rep);
          my_fin.push_back(ms(t0));
          if (!f.ok() || *f != FinishOutcome::kFinished) throw std::runtime_error("finish failed");
          if (++finished >= stop_after && stop_after > 0) break;
          t0 = Steady::now();
          auto c = store.Claim(req);
          my_lat.push_back(ms(t0));
          if (!c.ok()) throw std::runtime_error(c.error().message);
          task.reset();
          if (!c->empty()) task = c->front();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  s.seconds = std::chrono::duration<double>(Steady::now() - start).count();
  for (auto& l : lat) s.claim_ms.insert(s.claim_ms.end(), l.begin(), l.end());
  for (auto& l : fin) s.finish_ms.insert(s.finish_ms.end(), l.begin(), l.end());
  if (stop_after == 0 && finished != tasks) throw std::runtime_error("runner path lost tasks");
  if (stop_after > 0) s.tasks = finished;
  return s;
}

// The same statements, straight through libpqxx with the store's session
// settings: no pool, no row mapping.
RunStats RunRaw(const std::string& conninfo, int claimers, int tasks, bool combined) {
  RunStats s{combined ? "raw_sql_finish_and_claim" : "raw_sql", claimers, tasks, 0, {}, {}};
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(claimers));
  std::vector<std::vector<double>> fin(static_cast<std::size_t>(claimers));
  std::atomic<int> finished{0};
  std::vector<std::unique_ptr<pqxx::connection>> conns;
  for (int i = 0; i < claimers; ++i) {
    conns.push_back(std::make_unique<pqxx::connection>(conninfo));
    pqxx::nontransaction(*conns.back()).exec(std::string(sql::kSessionPlanSettings));
    for (const auto& st : {sql::kClaim, sql::kFinish, sql::kFinishAndClaim}) {
      conns.back()->prepare(st.name, std::string(st.text));
    }
  }
  const char* usage = R"({"cpu_seconds":0,"peak_memory":0,"duration":0})";
  auto start = Steady::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < claimers; ++i) {
    threads.emplace_back([&, i] {
      pqxx::connection& c = *conns[static_cast<std::size_t>(i)];
      auto& my_lat = lat[static_cast<std::size_t>(i)];
      auto& my_fin = fin[static_cast<std::size_t>(i)];
      std::string worker = "w" + std::to_string(i);
      std::string workers = "{\"" + worker + "\"}";
      auto ms = [](Steady::time_point t0) {
        return std::chrono::duration<double, std::milli>(Steady::now() - t0).count();
      };
      auto claim = [&]() -> std::optional<std::string> {
        auto t0 = Steady::now();
        pqxx::nontransaction tx(c);
        auto r = tx.exec_prepared(sql::kClaim.name, workers, "bench", int64_t{30000}, nullptr,
                                  int64_t{1}, nullptr);
        my_lat.push_back(ms(t0));
        if (r.empty()) return std::nullopt;
        return r[0][0].as<std::string>();
      };
      std::optional<std::string> id = claim();
      while (id) {
        auto t0 = Steady::now();
        if (combined) {
          pqxx::nontransaction tx(c);
          auto f = tx.exec_prepared(sql::kFinishAndClaim.name, *id, worker, "succeeded", "0",
                                    nullptr, usage, "process", true, 3600.0, "bench",
                                    int64_t{30000}, nullptr, nullptr);
          my_lat.push_back(ms(t0));
          const auto row = f[0];
          if (!row[row.size() - 1].as<bool>()) throw std::runtime_error("raw lease lost");
          id.reset();
          if (!row[0].is_null()) id = row[0].as<std::string>();
        } else {
          {
            pqxx::nontransaction tx(c);
            auto f = tx.exec_prepared(sql::kFinish.name, *id, worker, "succeeded", "0", nullptr,
                                      usage, "process", true, 3600.0);
            my_fin.push_back(ms(t0));
            if (f.empty()) throw std::runtime_error("raw lease lost");
          }
          id = claim();
        }
        ++finished;
      }
    });
  }
  for (auto& t : threads) t.join();
  s.seconds = std::chrono::duration<double>(Steady::now() - start).count();
  for (auto& l : lat) s.claim_ms.insert(s.claim_ms.end(), l.begin(), l.end());
  for (auto& l : fin) s.finish_ms.insert(s.finish_ms.end(), l.begin(), l.end());
  if (finished != tasks) throw std::runtime_error("raw path lost tasks");
  return s;
}

json::object ToJson(const RunStats& s) {
  return json::object{{"path", s.path},
                      {"claimers", s.claimers},
                      {"tasks", s.tasks},
                      {"seconds", s.seconds},
                      {"tasks_per_second", s.tasks / s.seconds},
                      {"claim_p50_ms", Percentile(s.claim_ms, 0.50)},
                      {"claim_p99_ms", Percentile(s.claim_ms, 0.99)},
                      {"finish_p50_ms", Percentile(s.finish_ms, 0.50)},
                      {"finish_p99_ms", Percentile(s.finish_ms, 0.99)}};
}

// Issue #18: the claim with groups and policies against today's plain claim,
// at 1 and 4 claimers, with `depth` tasks queued at the start of every run.
// Each setting has its own scratch database (the same cluster), filled once
// and topped up after each run, so the settings take turns within every round
// and a change in the host's load hits them all alike.
json::object GroupsBench(int depth, int groups, int tasks, int rounds) {
  QueuePolicy caps;
  caps.max_running = 64;
  caps.max_running_per_group = 2;
  QueuePolicy caps_rate = caps;
  caps_rate.rate_limit = RateLimit{1000000, 1.0};
  struct Setting {
    const char* name;
    int groups;
    std::optional<QueuePolicy> policy;
    std::unique_ptr<runner::testing::TestDatabase> db;
    std::unique_ptr<PostgresStore> store;
    int next_group = 0;
    std::map<int, std::vector<RunStats>> runs;  // by claimers
  };
  std::vector<Setting> settings;
  settings.push_back({"plain", 0, std::nullopt, nullptr, nullptr, 0, {}});
  settings.push_back({"groups", groups, std::nullopt, nullptr, nullptr, 0, {}});
  settings.push_back({"groups_capped", groups, caps, nullptr, nullptr, 0, {}});
  settings.push_back({"groups_capped_rate", groups, caps_rate, nullptr, nullptr, 0, {}});
  for (auto& s : settings) {
    s.db = std::make_unique<runner::testing::TestDatabase>();
    StoreOptions options;
    options.conninfo = s.db->conninfo();
    options.pool_size = 5;
    auto opened = PostgresStore::Open(options);
    if (!opened.ok()) throw std::runtime_error(opened.error().message);
    s.store = std::move(opened.value());
    if (s.policy) {
      auto r = s.store->SetQueuePolicy("default", *s.policy);
      if (!r.ok()) throw std::runtime_error(r.error().message);
    }
    FillGroups(*s.store, depth, s.groups);
    s.next_group = depth;
    Analyze(s.db->conninfo());
  }
  // Odd rounds take the settings in reverse order, so that none always runs
  // first (right after the previous round's top-ups) or last.
  for (int round = 0; round < rounds; ++round) {
    for (std::size_t k = 0; k < settings.size(); ++k) {
      auto& s = settings[round % 2 == 0 ? k : settings.size() - 1 - k];
      for (int claimers : {1, 4}) {
        RunStats d = RunStore(*s.store, claimers, depth, false, tasks);
        s.runs[claimers].push_back(d);
        // Back to `depth` queued, the groups continuing in turn.
        FillGroups(*s.store, d.tasks, s.groups, s.next_group);
        s.next_group += d.tasks;
      }
    }
  }
  // The ratio to plain within each round (runs a few seconds apart, so a
  // change in the shared host's load hits both), and its median: steadier on
  // a noisy host than the ratio of the medians, which may come from
  // different rounds. Both are reported.
  std::map<std::string, std::map<int, std::vector<double>>> paired;  // setting, claimers
  for (auto& s : settings) {
    for (auto& [claimers, v] : s.runs) {
      const auto& base = settings.front().runs[claimers];
      for (std::size_t r = 0; r < v.size() && r < base.size(); ++r) {
        paired[s.name][claimers].push_back((v[r].tasks / v[r].seconds) /
                                           (base[r].tasks / base[r].seconds));
      }
    }
  }
  json::array out;
  std::map<int, double> plain_tps;  // by claimers
  for (auto& s : settings) {
    for (auto& [claimers, v] : s.runs) {
      std::sort(v.begin(), v.end(), [](const RunStats& a, const RunStats& b) {
        return a.tasks / a.seconds < b.tasks / b.seconds;
      });
      RunStats m = v[v.size() / 2];  // the median run by throughput
      const double tps = m.tasks / m.seconds;
      if (s.groups == 0 && !s.policy) plain_tps[claimers] = tps;
      const double ratio = plain_tps[claimers] > 0 ? tps / plain_tps[claimers] : 0.0;
      json::object o = ToJson(m);
      o["setting"] = s.name;
      o["groups"] = s.groups;
      o["queued_at_start"] = depth;
      o["vs_plain"] = ratio;
      const std::vector<double>& pr = paired[s.name][claimers];
      const double paired_ratio = runner::bench::Median(pr);
      o["vs_plain_same_round_median"] = paired_ratio;
      o["vs_plain_each_round"] = json::array(pr.begin(), pr.end());
      json::array each;
      for (const auto& r : s.runs.at(claimers)) each.push_back(r.tasks / r.seconds);
      o["tasks_per_second_each_round"] = each;
      out.push_back(o);
      std::printf(
          "%-19s claimers=%d, %d queued in %4d groups: %6.0f tasks/s (%.2fx plain, %.2fx within "
          "a round) claim p50/p99 %.2f/%.2f ms finish p50/p99 %.2f/%.2f ms\n",
          s.name, claimers, depth, s.groups, tps, ratio, paired_ratio, Percentile(m.claim_ms, 0.5),
          Percentile(m.claim_ms, 0.99), Percentile(m.finish_ms, 0.5),
          Percentile(m.finish_ms, 0.99));
    }
  }
  for (auto& s : settings) s.store.reset();  // before its database is dropped
  return json::object{{"claimers", json::array{1, 4}},
                      {"queued", depth},
                      {"groups", groups},
                      {"tasks_per_run", tasks},
                      {"rounds", rounds},
                      {"caps", json::object{{"max_running", 64}, {"max_running_per_group", 2}}},
                      {"rate_limit", json::object{{"count", 1000000}, {"per", 1.0}}},
                      {"runs", out}};
}

// Fairness: 4 claimers work a `big`-task group; once they are under way a
// 3-task group is submitted. Counts the big group's tasks that start between
// that submit and the small group's last start (before #18: the whole
// backlog): from the start of the submit statement, which includes the
// claims made while the submit itself runs, and from its return (its commit
// seen). `rounds` times; the median and the worst.
json::object Fairness(PostgresStore& store, const std::string& conninfo, int big, bool capped,
                      int rounds) {
  constexpr int kClaimers = 4;
  std::vector<double> from_submit;
  std::vector<double> from_return;
  std::vector<double> wait_ms;
  int64_t backlog = 0;
  for (int round = 0; round < rounds; ++round) {
    Reset(conninfo);
    if (capped) {
      QueuePolicy caps;
      caps.max_running = 64;
      caps.max_running_per_group = 8;
      auto r = store.SetQueuePolicy("default", caps);
      if (!r.ok()) throw std::runtime_error(r.error().message);
    }
    FillGroups(store, big, 1, 0, "big");
    Analyze(conninfo);
    pqxx::connection c(conninfo);
    std::atomic<int> finished{0};
    std::atomic<int> small_started{0};
    std::atomic<bool> failed{false};
    std::vector<std::thread> threads;
    for (int i = 0; i < kClaimers; ++i) {
      threads.emplace_back([&, i] {
        ClaimRequest req;
        req.node_id = "bench";
        req.worker_ids = {"f" + std::to_string(i)};
        FinishReport rep;
        rep.state = TaskState::kSucceeded;
        rep.exit_code = 0;
        rep.isolation_used = "process";
        while (small_started.load() < 3 && !failed.load()) {
          auto r = store.Claim(req);
          if (!r.ok() || r->empty()) {
            failed = !r.ok() || finished.load() >= big;
            continue;
          }
          const Task& t = r->front();
          if (t.group == "small") ++small_started;
          auto f = store.Finish(t.id, req.worker_ids[0], rep);
          if (!f.ok()) failed = true;
          ++finished;
        }
      });
    }
    while (finished.load() < std::max(4, big / 50) && !failed.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    NewTask small;
    small.command = {"true"};
    small.group = "small";
    auto sub = store.SubmitBatch(std::vector<NewTask>(3, small));
    std::string returned;
    {
      pqxx::nontransaction tx(c);
      returned = tx.exec("SELECT clock_timestamp()::text")[0][0].as<std::string>();
    }
    for (auto& t : threads) t.join();
    if (!sub.ok() || failed.load()) throw std::runtime_error("fairness run failed");
    pqxx::nontransaction tx(c);
    auto row = tx.exec_params(
        "WITH s AS (SELECT min(created_at) AS submitted, max(started_at) AS last FROM tasks"
        "  WHERE \"group\" = 'small')"
        " SELECT (SELECT count(*) FROM tasks t, s WHERE t.\"group\" = 'big'"
        "   AND t.started_at > s.submitted AND t.started_at < s.last),"
        " (SELECT count(*) FROM tasks t, s WHERE t.\"group\" = 'big'"
        "   AND t.started_at > $1::timestamptz AND t.started_at < s.last),"
        " (SELECT extract(epoch FROM s.last - s.submitted) * 1000 FROM s),"
        " (SELECT count(*) FROM tasks t, s WHERE t.\"group\" = 'big'"
        "   AND (t.started_at IS NULL OR t.started_at > s.submitted))",
        returned)[0];
    from_submit.push_back(row[0].as<double>());
    from_return.push_back(row[1].as<double>());
    wait_ms.push_back(row[2].as<double>());
    backlog = row[3].as<int64_t>();
  }
  auto worst = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  std::printf(
      "fairness%s: of a %d-task group, %.0f tasks (worst %.0f of %d rounds) started between a "
      "3-task group's submit and its last start, %.0f (worst %.0f) after the submit returned; "
      "the small group waited %.1f ms (median). Before #18: its backlog, %lld\n",
      capped ? " (capped queue)" : "", big, runner::bench::Median(from_submit), worst(from_submit),
      rounds, runner::bench::Median(from_return), worst(from_return),
      runner::bench::Median(wait_ms), static_cast<long long>(backlog));
  return json::object{
      {"capped", capped},
      {"claimers", kClaimers},
      {"big_group_tasks", big},
      {"small_group_tasks", 3},
      {"rounds", rounds},
      {"big_started_between_median", runner::bench::Median(from_submit)},
      {"big_started_between_worst", worst(from_submit)},
      {"big_started_after_submit_returned_median", runner::bench::Median(from_return)},
      {"big_started_after_submit_returned_worst", worst(from_return)},
      {"small_wait_ms_median", runner::bench::Median(wait_ms)},
      {"big_backlog_at_submit", backlog}};
}

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = Arg(argc, argv, "--out", "bench/results/queue_runner.json");
  int tasks = std::stoi(Arg(argc, argv, "--tasks", "3000"));
  int rounds = std::stoi(Arg(argc, argv, "--rounds", "3"));
  int depth = std::stoi(Arg(argc, argv, "--depth", "100000"));
  int groups = std::stoi(Arg(argc, argv, "--groups", "1000"));
  int fair_big = std::stoi(Arg(argc, argv, "--fair-big", "10000"));
  // --only groups: just the issue #18 part (groups, policies, fairness).
  const bool only_groups = Arg(argc, argv, "--only", "") == "groups";
  std::optional<runner::testing::TestDatabase> db;
  try {
    db.emplace();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "queue_bench: no scratch database: %s\n", e.what());
    return 1;
  }
  const std::string conninfo = db->conninfo();
  json::array results;
  json::object heartbeat;
  json::array deep;
  json::object grouped;
  json::array fairness;
  int code = 0;
  try {
    StoreOptions options;
    options.conninfo = conninfo;
    options.pool_size = 17;
    auto opened = PostgresStore::Open(options);
    if (!opened.ok()) throw std::runtime_error(opened.error().message);
    auto& store = *opened.value();
    for (int claimers : {1, 4, 16}) {
      if (only_groups) break;
      for (bool combined : {false, true}) {
        // Alternate the paths so neither always runs on a warmer cache.
        std::vector<RunStats> store_runs;
        std::vector<RunStats> raw_runs;
        for (int round = 0; round < rounds; ++round) {
          Reset(conninfo);
          Fill(store, tasks);
          raw_runs.push_back(RunRaw(conninfo, claimers, tasks, combined));
          Reset(conninfo);
          Fill(store, tasks);
          store_runs.push_back(RunStore(store, claimers, tasks, combined));
        }
        auto median = [](std::vector<RunStats>& v) {  // by throughput
          std::sort(v.begin(), v.end(),
                    [](const RunStats& a, const RunStats& b) { return a.seconds < b.seconds; });
          return v[v.size() / 2];
        };
        RunStats s = median(store_runs);
        RunStats r = median(raw_runs);
        results.push_back(ToJson(r));
        results.push_back(ToJson(s));
        std::printf(
            "claimers=%2d %s raw_sql: %6.0f tasks/s claim p50/p99 %.2f/%.2f ms | runner: %6.0f "
            "tasks/s claim p50/p99 %.2f/%.2f ms (%.0f%% of raw)\n",
            claimers, combined ? "finish+claim" : "claim,finish", r.tasks / r.seconds,
            Percentile(r.claim_ms, 0.5), Percentile(r.claim_ms, 0.99), s.tasks / s.seconds,
            Percentile(s.claim_ms, 0.5), Percentile(s.claim_ms, 0.99),
            100.0 * (s.tasks / s.seconds) / (r.tasks / r.seconds));
      }
    }
    // Claim latency with a deep queue: `depth` tasks queued, each claimer
    // claims and finishes until `tasks` are done, the rest stays queued.
    if (depth > 0 && !only_groups) {
      Reset(conninfo);
      Fill(store, depth);
      for (int claimers : {1, 4}) {
        RunStats d = RunStore(store, claimers, depth, false, tasks);
        json::object o = ToJson(d);
        o["queued_at_start"] = depth;
        deep.push_back(o);
        std::printf(
            "claimers=%2d with %d queued: %6.0f tasks/s claim p50/p99 %.2f/%.2f ms finish p50/p99 "
            "%.2f/%.2f ms\n",
            claimers, depth, d.tasks / d.seconds, Percentile(d.claim_ms, 0.5),
            Percentile(d.claim_ms, 0.99), Percentile(d.finish_ms, 0.5),
            Percentile(d.finish_ms, 0.99));
      }
    }
    // Issue #18: groups and policies against the plain claim, and fairness.
    if (depth > 0) grouped = GroupsBench(depth, groups, tasks, rounds);
    if (fair_big > 0) {
      for (bool capped : {false, true}) {
        fairness.push_back(Fairness(store, conninfo, fair_big, capped, rounds));
      }
    }
    if (!only_groups) {
      // Lease renewal of 100 running tasks in one statement.
      Reset(conninfo);
      Fill(store, 100);
      ClaimRequest req;
      req.node_id = "bench";
      for (int i = 0; i < 100; ++i) req.worker_ids.push_back(runner::NewUlid());
      auto claimed = store.Claim(req);
      if (!claimed.ok() || claimed->size() != 100) throw std::runtime_error("claim of 100 failed");
      HeartbeatRequest hb;
      hb.node_id = "bench";
      hb.target_workers = 100;
      for (const auto& t : *claimed) hb.workers.push_back({*t.worker_id, WorkerState::kBusy, t.id});
      std::vector<double> hb_ms;
      for (int i = 0; i < 300; ++i) {
        auto t0 = Steady::now();
        auto r = store.Heartbeat(hb);
        hb_ms.push_back(std::chrono::duration<double, std::milli>(Steady::now() - t0).count());
        if (!r.ok() || !r->lost_task_ids.empty()) throw std::runtime_error("heartbeat failed");
      }
      heartbeat = json::object{{"running_tasks", 100},
                               {"calls", 300},
                               {"p50_ms", Percentile(hb_ms, 0.5)},
                               {"p99_ms", Percentile(hb_ms, 0.99)}};
      std::printf("heartbeat of 100 running tasks: p50 %.2f ms p99 %.2f ms\n",
                  Percentile(hb_ms, 0.5), Percentile(hb_ms, 0.99));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "queue_bench failed: %s\n", e.what());
    code = 1;
  }
  db.reset();  // dropped WITH (FORCE)
  if (code == 0) {
    json::object doc{{"tasks_per_run", tasks},
                     {"rounds", rounds},
                     {"cpus", static_cast<int64_t>(std::thread::hardware_concurrency())},
                     {"claim_finish", results},
                     {"deep_queue", deep},
                     {"groups", grouped},
                     {"fairness", fairness},
                     {"heartbeat", heartbeat}};
    std::ofstream(out) << json::serialize(doc) << "\n";
  }
  return code;
}
