// Scenario 7: load. Thousands of queued tasks (a fake-fast path: process
// isolation running `true`) drained by many workers with flat claim latency;
// then retention: finished tasks and events are deleted and, after a VACUUM
// (what autovacuum does), a second round of the same size reuses the space
// instead of growing the tables.
#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <sstream>

#include "base/ulid.h"
#include "tests/chaos/scenario.h"

namespace runner::chaos {
namespace {

struct Histogram {
  std::vector<std::pair<double, double>> buckets;  // le -> cumulative count
  double sum = 0, count = 0;
};

Histogram ClaimHistogram(int port, const std::string& name = "runner_claim_duration_seconds") {
  Histogram h;
  std::istringstream in(HttpGet(port, "/metrics", 10s).body);
  std::string line;
  std::map<double, double> b;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    const double v = std::atof(line.c_str() + space + 1);
    if (line.rfind(name + "_bucket", 0) == 0) {
      auto le = line.find("le=\"");
      if (le == std::string::npos) continue;
      std::string bound = line.substr(le + 4, line.find('"', le + 4) - le - 4);
      b[bound == "+Inf" ? 1e30 : std::atof(bound.c_str())] += v;
    } else if (line.rfind(name + "_sum", 0) == 0) {
      h.sum += v;
    } else if (line.rfind(name + "_count", 0) == 0) {
      h.count += v;
    }
  }
  h.buckets.assign(b.begin(), b.end());
  return h;
}

// Upper bound of the bucket holding quantile q of the difference a - b.
double Quantile(const Histogram& a, const Histogram& b, double q) {
  const double total = a.count - b.count;
  if (total <= 0) return 0;
  for (size_t i = 0; i < a.buckets.size(); ++i) {
    const double before = i < b.buckets.size() ? b.buckets[i].second : 0;
    if (a.buckets[i].second - before >= q * total) return a.buckets[i].first;
  }
  return 1e30;
}

double MeanMs(const Histogram& a, const Histogram& b) {
  const double n = a.count - b.count;
  return n > 0 ? 1000.0 * (a.sum - b.sum) / n : 0;
}

void InsertQueued(const std::string& conninfo, int n) {
  pqxx::connection c(conninfo);
  for (int done = 0; done < n;) {
    const int batch = std::min(5000, n - done);
    std::string arr = "{";
    for (int i = 0; i < batch; ++i) arr += (i ? "," : "") + NewUlid();
    arr += "}";
    pqxx::work tx(c);
    tx.exec_params(
        "INSERT INTO tasks (id, queue, state, image, command, timeout, isolation)"
        " SELECT unnest($1::text[]), 'default', 'queued', 'runner-task:latest', ARRAY['true'], 60, "
        "'process'",
        arr);
    tx.commit();
    done += batch;
  }
  pqxx::nontransaction tx(c);
  tx.exec("SELECT pg_notify('runner_tasks', 'default')");
}

long long Size(const std::string& conninfo, const std::string& table) {
  return QueryInt(conninfo, "SELECT pg_total_relation_size('" + table + "')");
}

std::string Mb(long long bytes) {
  std::ostringstream os;
  os.precision(3);
  os << static_cast<double>(bytes) / 1048576.0 << " MiB";
  return os.str();
}

}  // namespace

constexpr const char* kFinishAndClaim = "runner_finish_and_claim_duration_seconds";

TEST_CASE(
    "thousands of queued tasks drain with flat claim latency and retention keeps the tables "
    "from growing",
    "[chaos][load]") {
  Scenario s;
  const std::string conninfo = s.db.conninfo();
  RunnerArgs a = s.Args("node");
  a.workers = Pick(20, 100);
  a.mode = "process";
  a.lease = 30;
  RunnerProcess& node = s.Add(a, "node");
  REQUIRE(node.Start());

  const std::vector<int> rounds =
      FullMode() ? std::vector<int>{10000, 10000, 100000} : std::vector<int>{2000, 2000};
  std::ostringstream table;
  table << "| round | tasks | drained in | tasks/s | claim mean 1st half / 2nd half | claim p50 / "
           "p99 (bucket bound) | busy workers' finish+claim: count, p50 / p99 | tasks+events size "
           "after run | after retention + VACUUM |\n"
           "|---|---|---|---|---|---|---|---|---|\n";
  std::vector<long long> sizes_after_run;
  std::vector<double> p50s, first_means, second_means;
  bool all_drained = true;
  long long lost_total = 0;
  for (size_t r = 0; r < rounds.size(); ++r) {
    const int n = rounds[r];
    const Histogram h0 = ClaimHistogram(node.port());
    const Histogram f0 = ClaimHistogram(node.port(), kFinishAndClaim);
    auto t0 = Clock::now();
    InsertQueued(conninfo, n);
    Histogram h_half;
    bool half_taken = false;
    const bool drained = testing::WaitFor(
        [&] {
          long long left = s.Unfinished();
          if (!half_taken && left <= n / 2) {
            h_half = ClaimHistogram(node.port());
            half_taken = true;
          }
          return left == 0;
        },
        r == 2 ? 1800s : Pick(180s, 600s), 250ms);
    const double secs = SecondsSince(t0);
    const Histogram h1 = ClaimHistogram(node.port());
    const Histogram f1 = ClaimHistogram(node.port(), kFinishAndClaim);
    if (!half_taken) h_half = h1;
    all_drained = all_drained && drained;
    lost_total += QueryInt(conninfo, "SELECT count(*) FROM tasks WHERE state <> 'succeeded'");
    const long long size_run = Size(conninfo, "tasks") + Size(conninfo, "events");
    sizes_after_run.push_back(size_run);
    const double m1 = MeanMs(h_half, h0), m2 = MeanMs(h1, h_half);
    const double p50 = Quantile(h1, h0, 0.5) * 1000, p99 = Quantile(h1, h0, 0.99) * 1000;
    p50s.push_back(p50);
    first_means.push_back(m1);
    second_means.push_back(m2);

    // Retention: age everything past the retention windows; the reaper deletes
    // in batches; VACUUM stands in for autovacuum so the space is reusable.
    {
      pqxx::connection c(conninfo);
      pqxx::nontransaction tx(c);
      tx.exec("UPDATE tasks SET finished_at = now() - interval '8 days'");
      tx.exec("UPDATE events SET at = now() - interval '2 days'");
    }
    const bool retained = testing::WaitFor(
        [&] {
          return QueryInt(conninfo, "SELECT count(*) FROM tasks") == 0 &&
                 QueryInt(conninfo,
                          "SELECT count(*) FROM events WHERE at < now() - interval '1 day'") == 0;
        },
        Pick(60s, 300s), 500ms);
    {
      pqxx::connection c(conninfo);
      pqxx::nontransaction tx(c);
      tx.exec("VACUUM tasks");
      tx.exec("VACUUM events");
      tx.exec("VACUUM task_logs");
    }
    const long long size_after = Size(conninfo, "tasks") + Size(conninfo, "events");
    CHECK(retained);
    // VACUUM gives back the heap pages retention emptied.
    CHECK(size_after < size_run);
    table << "| " << r + 1 << " | " << n << " | " << secs << " s | "
          << static_cast<int>(n / std::max(secs, 0.001)) << " | " << m1 << " ms / " << m2
          << " ms | " << p50 << " ms / " << p99 << " ms | " << (f1.count - f0.count) << ", "
          << Quantile(f1, f0, 0.5) * 1000 << " ms / " << Quantile(f1, f0, 0.99) * 1000 << " ms | "
          << Mb(size_run) << " | " << Mb(size_after) << (retained ? "" : " (retention incomplete)")
          << " |\n";
  }

  std::ostringstream md;
  md << "## 7. Load\n\n"
     << "One node, " << a.workers
     << " workers, `--mode process`, tasks `true` (the fake-fast "
        "path) inserted straight into the queue table in batches of 5,000 and woken by one NOTIFY. "
        "Claim latency from the node's `runner_claim_duration_seconds` histogram: the claimer's "
        "batch claims for idle workers (the quantile is the upper bound of its bucket). A busy "
        "worker reports its task and claims its next one in one statement, counted apart in "
        "`runner_finish_and_claim_duration_seconds`. After each round every task and event is aged "
        "past the "
        "retention windows; the node's reaper deletes them; `VACUUM` stands in for autovacuum.\n\n"
     << table.str();
  ReportSection("7-load", md.str());
  INFO(md.str());
  INFO(node.LogTail(2000));

  CHECK(all_drained);
  CHECK(lost_total == 0);
  for (size_t r = 0; r < rounds.size(); ++r) {
    INFO("round " << r + 1);
    // Flat: the second half of the drain claims no slower than the first (with slack).
    CHECK(second_means[r] <= 3 * first_means[r] + 2);
  }
  if (FullMode()) {
    // With 100,000 queued the batch claim stays as fast as with 10,000: half
    // of them within 5 ms, the mean within 5 ms. Its p99 here is CPU queueing
    // (100 workers, ~900 processes/s and PostgreSQL on 2 cores), reported in
    // the table; the claim's own p99 at that depth is bench/queue's
    // deep-queue run.
    CHECK(p50s.back() <= 5);
    CHECK(first_means.back() <= 5);
    CHECK(second_means.back() <= 5);
  }
  // The second round of the same size reuses part of the space the first one
  // left: without retention it would end at about twice the first round's
  // size. Not all of it: index pages emptied by one VACUUM are recycled only
  // by a later one, so round 2 ends 1.3-1.5x round 1 (1.5x was a flaky bound:
  // round 1's size depends on how fast it drained).
  CHECK(sizes_after_run[1] <= sizes_after_run[0] * 7 / 4);
}

}  // namespace runner::chaos
