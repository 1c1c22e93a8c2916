#include "isolation/docker/container_stats.h"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

using namespace runner::isolation::docker;

TEST_CASE("CPU percent is delta usage over delta system times online cpus", "[docker][stats]") {
  CpuCounters before{1'000'000'000, 100'000'000'000, 4};
  CpuCounters after{1'500'000'000, 102'000'000'000, 4};
  // 0.5 s of CPU over 2 s of all-4-cores system time = 0.25 x 4 x 100.
  CHECK(CpuPercent(before, after) == Approx(100.0));
}

TEST_CASE("CPU percent is zero without progress in either counter", "[docker][stats]") {
  CpuCounters a{10, 100, 2};
  CHECK(CpuPercent(a, a) == 0);
  CHECK(CpuPercent(a, CpuCounters{20, 100, 2}) == 0);
  CHECK(CpuPercent(CpuCounters{}, CpuCounters{0, 100, 2}) == 0);
}

TEST_CASE("memory on cgroup v1 is usage minus cache", "[docker][stats]") {
  auto v = boost::json::parse(R"({"usage": 10000, "max_usage": 20000,
      "stats": {"cache": 3000, "rss": 7000, "shmem": 2048, "total_inactive_file": 1000}})");
  CHECK(MemoryWorkingSet(v.as_object()) == 7000);
}

TEST_CASE("memory on cgroup v2 is usage minus inactive_file", "[docker][stats]") {
  auto v =
      boost::json::parse(R"({"usage": 10000, "stats": {"inactive_file": 4000, "anon": 6000}})");
  CHECK(MemoryWorkingSet(v.as_object()) == 6000);
}

TEST_CASE("memory never goes negative on odd reports", "[docker][stats]") {
  auto v = boost::json::parse(R"({"usage": 100, "stats": {"cache": 4000}})");
  CHECK(MemoryWorkingSet(v.as_object()) == 0);
}

TEST_CASE("a real stats document parses into usage numbers", "[docker][stats]") {
  auto s = ParseContainerStats(R"({
    "cpu_stats": {"cpu_usage": {"total_usage": 2000000000, "percpu_usage": [1, 2]},
                  "system_cpu_usage": 900000000000, "online_cpus": 0},
    "precpu_stats": {"cpu_usage": {"total_usage": 1000000000}, "system_cpu_usage": 898000000000,
                     "online_cpus": 2},
    "memory_stats": {"usage": 50000000, "max_usage": 60000000, "limit": 67108864,
                     "stats": {"cache": 10000000, "shmem": 4096}},
    "pids_stats": {"current": 3}})");
  REQUIRE(s.ok());
  CHECK(s->cpu.online_cpus == 2);  // from percpu_usage when online_cpus is missing
  CHECK(CpuPercent(s->precpu, s->cpu) == Approx(100.0));
  CHECK(s->memory == 40000000);
  CHECK(s->memory_max_usage == 60000000);
  CHECK(s->shmem == 4096);
  CHECK(s->pids == 3);
  CHECK_FALSE(s->empty);
}

TEST_CASE("stats of a stopped container are flagged empty", "[docker][stats]") {
  auto s = ParseContainerStats(R"({"cpu_stats": {"cpu_usage": {"total_usage": 0}},
                                   "memory_stats": {}, "pids_stats": {}})");
  REQUIRE(s.ok());
  CHECK(s->empty);
}

TEST_CASE("garbage stats are an internal error, not a crash", "[docker][stats]") {
  auto s = ParseContainerStats("<html>nope</html>");
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code == "internal");
}
