// Scenario 4: disk nearly full (a real, small tmpfs as --data-dir that we
// fill) and memory pressure (a threshold below the host's current use): the
// node stops claiming (pool throttled in /api/v1/status) and resumes.
#include <signal.h>
#include <sys/mount.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "tests/chaos/scenario.h"

namespace runner::chaos {
namespace {

// A tmpfs mounted for the scenario, unmounted on every path.
class Tmpfs {
 public:
  Tmpfs(fs::path at, long long bytes) : at_(std::move(at)) {
    fs::create_directories(at_);
    ok_ = ::mount("tmpfs", at_.c_str(), "tmpfs", 0, ("size=" + std::to_string(bytes)).c_str()) == 0;
  }
  ~Tmpfs() {
    if (ok_) ::umount2(at_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ok_; }

 private:
  fs::path at_;
  bool ok_ = false;
};

double MemoryUsedPercent() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  long long v = 0, total = 0, avail = 0;
  std::string unit;
  while (in >> key >> v >> unit) {
    if (key == "MemTotal:") total = v;
    if (key == "MemAvailable:") avail = v;
  }
  return total > 0 ? 100.0 * static_cast<double>(total - avail) / static_cast<double>(total) : 0;
}

std::string PoolState(int port) {
  return JsonField(HttpGet(port, "/api/v1/status").body, "pool.state");
}

}  // namespace

TEST_CASE(
    "a nearly full disk stops claims until space is freed, and memory pressure stops them "
    "too",
    "[chaos][pressure]") {
  Scenario s;
  fs::path mnt = s.dir.path() / "tmpfs";
  const long long size = 32LL << 20;
  Tmpfs tmpfs(mnt, size);
  REQUIRE(tmpfs.ok());

  RunnerArgs a = s.Args("disk");
  a.data_dir = mnt / "data";
  a.workers = 2;
  a.mode = "process";
  a.config_yaml =
      "pressure:\n  diskHigh: 70\n  diskLow: 50\n  cpuHigh: 100\n  cpuLow: 99\n"
      "  memoryHigh: 100\n  memoryLow: 99\n";
  RunnerProcess& node = s.Add(a, "disk");
  REQUIRE(node.Start());
  REQUIRE(testing::WaitFor([&] { return PoolState(node.port()) == "running"; }, 15s, 100ms));

  // Fill the tmpfs to ~80 %.
  auto fill_t0 = Clock::now();
  {
    std::ofstream fill(mnt / "fill", std::ios::binary);
    std::string chunk(1 << 20, 'x');
    for (int i = 0; i < 26; ++i) fill << chunk;
  }
  const bool throttled =
      testing::WaitFor([&] { return PoolState(node.port()) == "throttled"; }, 15s, 100ms);
  const double throttle_s = SecondsSince(fill_t0);
  const std::string status = HttpGet(node.port(), "/api/v1/status").body;
  const std::string reason = JsonField(status, "backpressure.reason");
  const bool active = JsonField(status, "backpressure.active") == "true";

  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    std::string id = Submit(node.port(), TaskJson(Opts({"true"})));
    REQUIRE(!id.empty());
    ids.push_back(id);
  }
  std::this_thread::sleep_for(3s);
  const long long claimed_while_full =
      QueryInt(s.db.conninfo(), "SELECT count(*) FROM tasks WHERE state <> 'queued'");

  auto free_t0 = Clock::now();
  fs::remove(mnt / "fill");
  const bool resumed =
      testing::WaitFor([&] { return PoolState(node.port()) == "running"; }, 15s, 100ms);
  const double resume_s = SecondsSince(free_t0);
  const bool drained = s.WaitAllFinal(30s);
  const long long events_throttled =
      QueryInt(s.db.conninfo(), "SELECT count(*) FROM events WHERE kind = 'pool.throttled'");
  const long long events_resumed =
      QueryInt(s.db.conninfo(), "SELECT count(*) FROM events WHERE kind = 'pool.resumed'");
  node.Signal(SIGTERM);
  CHECK(node.Wait(30s) == 0);

  // Memory: a high mark below what the host uses now.
  const double used = MemoryUsedPercent();
  const int high = std::max(2, static_cast<int>(used) - 2);
  RunnerArgs m = s.Args("memory");
  m.workers = 2;
  m.mode = "process";
  m.config_yaml = "pressure:\n  memoryHigh: " + std::to_string(high) +
                  "\n  memoryLow: " + std::to_string(high - 1) + "\n  cpuHigh: 100\n  cpuLow: 99\n";
  RunnerProcess& mem = s.Add(m, "memory");
  REQUIRE(mem.Start());
  const bool mem_throttled =
      testing::WaitFor([&] { return PoolState(mem.port()) == "throttled"; }, 15s, 100ms);
  const std::string mem_reason =
      JsonField(HttpGet(mem.port(), "/api/v1/status").body, "backpressure.reason");
  std::vector<std::string> mem_ids;
  for (int i = 0; i < 5; ++i) {
    std::string id = Submit(mem.port(), TaskJson(Opts({"true"})));
    REQUIRE(!id.empty());
    mem_ids.push_back(id);
    ids.push_back(id);
  }
  std::this_thread::sleep_for(3s);
  std::string in_list;
  for (const auto& id : mem_ids) in_list += (in_list.empty() ? "'" : ",'") + id + "'";
  const long long mem_claimed =
      QueryInt(s.db.conninfo(),
               "SELECT count(*) FROM tasks WHERE state <> 'queued' AND id IN (" + in_list + ")");
  mem.Signal(SIGTERM);
  CHECK(mem.Wait(30s) == 0);
  // A node with ordinary thresholds picks up what the throttled one left.
  RunnerArgs n = s.Args("normal");
  n.workers = 2;
  n.mode = "process";
  RunnerProcess& normal = s.Add(n, "normal");
  REQUIRE(normal.Start());
  const bool mem_drained = s.WaitAllFinal(30s);
  Invariants inv = CheckInvariants(s.db.conninfo(), ids);

  std::ostringstream md;
  md << "## 4. Disk nearly full and memory pressure\n\n"
     << "Disk: a real 32 MiB tmpfs as `--data-dir` (`pressure.diskHigh 70`, `diskLow 50`), filled "
        "to 81 % with a file, then freed. Memory: `pressure.memoryHigh` set 2 points below the "
        "host's current use ("
     << used << " %), so the reading is over the threshold from the start.\n\n"
     << "| measure | value |\n|---|---|\n"
     << "| disk: pool throttled after the fill | " << (throttled ? "yes" : "NO") << " after "
     << throttle_s << " s (reason: " << reason << ") |\n"
     << "| disk: tasks claimed in 3 s while throttled | " << claimed_while_full << " / 10 |\n"
     << "| disk: pool running again after freeing | " << (resumed ? "yes" : "NO") << " after "
     << resume_s << " s |\n"
     << "| disk: queued tasks finished after resume | " << (drained ? "all" : "NOT all") << " |\n"
     << "| pool.throttled / pool.resumed events | " << events_throttled << " / " << events_resumed
     << " |\n"
     << "| memory: pool throttled | " << (mem_throttled ? "yes" : "NO")
     << " (reason: " << mem_reason << ") |\n"
     << "| memory: tasks claimed in 3 s while throttled | " << mem_claimed << " / 5 |\n"
     << "| memory: tasks finished by a node without pressure | "
     << (mem_drained ? "all" : "NOT all") << " |\n"
     << "| tasks submitted / final / lost | " << inv.submitted << " / " << inv.final_tasks << " / "
     << inv.lost << " |\n";
  ReportSection("4-pressure", md.str());
  INFO(md.str());
  INFO(node.LogTail(2000));

  CHECK(throttled);
  CHECK(active);
  CHECK(reason.find("disk") != std::string::npos);
  CHECK(claimed_while_full == 0);
  CHECK(resumed);
  CHECK(drained);
  CHECK(events_throttled >= 1);
  CHECK(events_resumed >= 1);
  CHECK(mem_throttled);
  CHECK(mem_reason.find("memory") != std::string::npos);
  CHECK(mem_claimed == 0);
  CHECK(mem_drained);
  CHECK(inv.lost == 0);
  CHECK(inv.multi_final == 0);
}

}  // namespace runner::chaos
