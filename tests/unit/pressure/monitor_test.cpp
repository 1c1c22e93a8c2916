#include "runner/pressure/monitor.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runner/metrics/registry.h"
#include "runner/pressure/resource_source.h"
#include "tests/support/fakes/manual_clock.h"
#include "tests/support/services.h"

using runner::pressure::Monitor;
using runner::pressure::MonitorOptions;
using runner::pressure::Reading;

namespace {

// Readings set by the test, read by the monitor.
struct Readings {
  double cpu = 5;
  double memory_percent = 10;
  double disk_percent = 10;
};

class FakeSource : public runner::pressure::ResourceSource {
 public:
  explicit FakeSource(const Readings* r) : r_(r) {}
  Reading Read() override {
    Reading out;
    out.cpu_percent = r_->cpu;
    out.memory_total = 1000;
    out.memory_used = static_cast<int64_t>(r_->memory_percent * 10);
    out.disk_total = 1000;
    out.disk_used = static_cast<int64_t>(r_->disk_percent * 10);
    out.disk_path = "/data";
    return out;
  }

 private:
  const Readings* r_;
};

// What the monitor told its pool, in order: the pool's throttle flag is the
// one anybody reads (the status and metrics), so the tests read it here.
struct Changes {
  std::vector<std::pair<bool, std::string>> seen;
  bool Throttled() const { return !seen.empty() && seen.back().first; }
  std::optional<std::string> Reason() const {
    if (!Throttled()) return std::nullopt;
    return seen.back().second;
  }
};

std::unique_ptr<Monitor> MakeMonitor(const Readings& r, Changes& changes,
                                     runner::metrics::Registry& registry,
                                     MonitorOptions options = {}) {
  return std::make_unique<Monitor>(
      std::make_unique<FakeSource>(&r), options, registry,
      [&changes](bool on, const std::string& reason) { changes.seen.emplace_back(on, reason); });
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

}  // namespace

TEST_CASE("memory over the high mark throttles until it falls under the low mark", "[pressure]") {
  Readings r;
  Changes changes;
  runner::metrics::Registry registry;
  auto m = MakeMonitor(r, changes, registry);
  m->SampleOnce();
  CHECK_FALSE(changes.Throttled());
  r.memory_percent = 91;
  m->SampleOnce();
  REQUIRE(changes.Throttled());
  CHECK(changes.Reason()->find("memory 91.0% >= 90%") != std::string::npos);
  r.memory_percent = 85;  // between the marks: stays throttled
  m->SampleOnce();
  CHECK(changes.Throttled());
  r.memory_percent = 79;
  m->SampleOnce();
  CHECK_FALSE(changes.Throttled());
  CHECK_FALSE(changes.Reason().has_value());
  REQUIRE(changes.seen.size() == 2);
  CHECK(changes.seen[0].first);
  CHECK_FALSE(changes.seen[1].first);
}

TEST_CASE("one busy CPU second does not throttle, a sustained one does", "[pressure]") {
  Readings r;
  Changes changes;
  runner::metrics::Registry registry;
  auto m = MakeMonitor(r, changes, registry);
  r.cpu = 99;
  m->SampleOnce();
  m->SampleOnce();
  CHECK_FALSE(changes.Throttled());
  r.cpu = 10;
  m->SampleOnce();
  r.cpu = 95;
  m->SampleOnce();
  m->SampleOnce();
  CHECK_FALSE(changes.Throttled());
  m->SampleOnce();
  REQUIRE(changes.Throttled());
  CHECK(changes.Reason()->find("cpu 95.0%") != std::string::npos);
  r.cpu = 50;
  m->SampleOnce();
  CHECK_FALSE(changes.Throttled());
}

TEST_CASE("a full disk throttles and names the filesystem", "[pressure]") {
  Readings r;
  Changes changes;
  runner::metrics::Registry registry;
  auto m = MakeMonitor(r, changes, registry);
  r.disk_percent = 96;
  m->SampleOnce();
  REQUIRE(changes.Throttled());
  CHECK(changes.Reason()->find("disk 96.0% >= 95% (/data)") != std::string::npos);
}

TEST_CASE("configured thresholds apply and 100 disables a check", "[pressure]") {
  Readings r;
  Changes changes;
  runner::metrics::Registry registry;
  MonitorOptions o;
  o.thresholds.memory_high = 100;
  o.thresholds.disk_high = 50;
  o.thresholds.disk_low = 40;
  auto m = MakeMonitor(r, changes, registry, o);
  r.memory_percent = 100;
  m->SampleOnce();
  CHECK_FALSE(changes.Throttled());
  r.disk_percent = 55;
  m->SampleOnce();
  CHECK(changes.Throttled());
}

TEST_CASE("host readings show in the metrics and the last sample", "[pressure]") {
  Readings r;
  r.cpu = 42;
  r.memory_percent = 50;
  Changes changes;
  runner::metrics::Registry registry;
  auto m = MakeMonitor(r, changes, registry);
  m->SampleOnce();
  auto last = m->Last();
  CHECK(last.cpu_percent == Approx(42));
  CHECK(last.memory_used == 500);
  CHECK(last.memory_total == 1000);
  std::string text = registry.Render();
  CHECK(text.find("runner_host_cpu_percent 42") != std::string::npos);
  CHECK(text.find("runner_host_memory_used_bytes 500") != std::string::npos);
  CHECK(text.find("runner_host_disk_total_bytes 1000") != std::string::npos);
}

TEST_CASE("the /proc reader computes CPU from deltas and memory from MemAvailable", "[pressure]") {
  runner::testing::TempDir dir;
  const std::string root = dir.path().string();
  Write(root + "/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n");
  Write(root + "/meminfo", "MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    250 kB\n");
  runner::pressure::ProcResourceSource source({root}, root);
  Reading first = source.Read();
  CHECK_FALSE(first.cpu_percent.has_value());
  CHECK(first.memory_total == 1000 * 1024);
  CHECK(first.memory_used == 750 * 1024);
  CHECK(first.disk_total > 0);
  CHECK(first.disk_path == root);
  // +300 busy, +100 idle over 400 ticks: 75% busy.
  Write(root + "/stat", "cpu  250 0 250 900 0 0 0 0 0 0\n");
  Reading second = source.Read();
  REQUIRE(second.cpu_percent.has_value());
  CHECK(*second.cpu_percent == Approx(75));
}

TEST_CASE("the /proc reader reads this host", "[pressure]") {
  runner::pressure::ProcResourceSource source({"/", "/no/such/dir"});
  (void)source.Read();
  Reading r = source.Read();
  CHECK(r.memory_total > 0);
  CHECK(r.memory_used > 0);
  CHECK(r.disk_total > 0);
  CHECK(r.disk_path == "/");
}

TEST_CASE("the monitor samples at the interval on the node's clock until stopped", "[pressure]") {
  Readings r;
  Changes changes;
  runner::metrics::Registry registry;
  MonitorOptions o;
  o.interval = std::chrono::hours(1);  // never passes in real time during the test
  runner::testing::ManualClock clock(std::chrono::system_clock::now());
  std::atomic<int> samples{0};
  Monitor m(
      std::make_unique<FakeSource>(&r), o, registry, [](bool, const std::string&) {},
      [&](const runner::ResourceSample&) { ++samples; }, clock);
  using runner::testing::WaitFor;
  m.Start();
  REQUIRE(WaitFor([&] { return samples.load() == 1; }, std::chrono::seconds(5)));  // at once
  clock.Advance(std::chrono::minutes(59));
  CHECK_FALSE(WaitFor([&] { return samples.load() > 1; }, std::chrono::milliseconds(100)));
  // Only the clock can bring the next sample: real time never reaches an hour.
  clock.Advance(std::chrono::minutes(1));
  CHECK(WaitFor([&] { return samples.load() == 2; }, std::chrono::seconds(5)));
  m.Stop();
  const int stopped_at = samples.load();
  clock.Advance(std::chrono::hours(2));
  CHECK_FALSE(WaitFor([&] { return samples.load() > stopped_at; }, std::chrono::milliseconds(50)));
}

TEST_CASE("the monitor samples on its own thread until stopped", "[pressure]") {
  Readings r;
  r.memory_percent = 95;
  Changes changes;
  runner::metrics::Registry registry;
  MonitorOptions o;
  o.interval = std::chrono::milliseconds(10);
  std::atomic<bool> throttled{false};
  Monitor m(std::make_unique<FakeSource>(&r), o, registry,
            [&](bool on, const std::string&) { throttled = on; });
  m.Start();
  CHECK(runner::testing::WaitFor([&] { return throttled.load(); }, std::chrono::seconds(5)));
  m.Stop();
  m.Stop();
}

TEST_CASE("a disabled check does not keep the pool throttled once the others are back",
          "[pressure]") {
  Readings r;
  Changes changes;
  runner::metrics::Registry registry;
  MonitorOptions o;
  o.thresholds.cpu_high = 100;
  o.thresholds.cpu_low = 99;
  o.thresholds.disk_high = 70;
  o.thresholds.disk_low = 50;
  auto m = MakeMonitor(r, changes, registry, o);
  r.cpu = 100;  // a saturated host
  r.disk_percent = 81;
  m->SampleOnce();
  CHECK(changes.Throttled());
  r.disk_percent = 10;
  m->SampleOnce();
  CHECK_FALSE(changes.Throttled());
}
