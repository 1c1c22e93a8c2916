// How the process isolator reads a host's cgroup layout (no cgroups touched).

#include <catch2/catch.hpp>

#include "isolation/process/cgroup.h"

namespace runner::isolation::process {
namespace {

// This appliance's build host: cgroup v1 controllers each mounted alone, our
// memory cgroup nested by the sandbox, and a controller-less unified v2.
constexpr const char* kHybridMountinfo =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n"
    "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
    "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
    "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
constexpr const char* kHybridSelf =
    "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/abc\n3:cpuset:/\n"
    "2:cpuacct:/\n1:cpu:/\n0::/\n";

TEST_CASE("a hybrid v1 host gets v1 limits and the unified hierarchy's kill", "[process][cgroup]") {
  CgroupHost host = CgroupHost::FromProcFiles(kHybridMountinfo, kHybridSelf, "runner", false);
  REQUIRE(host.memory().has_value());
  const auto& hs = host.hierarchies();
  CHECK(hs[*host.memory()].parent == "/sys/fs/cgroup/memory/process_api/abc/runner");
  CHECK_FALSE(hs[*host.memory()].v2);
  REQUIRE(host.cpu().has_value());
  CHECK(hs[*host.cpu()].parent == "/sys/fs/cgroup/cpu/runner");
  REQUIRE(host.pids().has_value());
  CHECK(hs[*host.pids()].parent == "/sys/fs/cgroup/pids/runner");
  REQUIRE(host.v2().has_value());
  CHECK(hs[*host.v2()].parent == "/sys/fs/cgroup/unified/runner");
  CHECK(hs[*host.v2()].v2);
  // CPU seconds from the v2 cpu.stat (entered at clone time, free), and
  // cgroup.kill there makes the v1 freezer unnecessary.
  CHECK(host.cpuacct() == host.v2());
  CHECK_FALSE(host.freezer().has_value());
  // cpuacct, freezer, cpuset and the named systemd hierarchy serve no role:
  // tasks skip them.
  CHECK(hs.size() == 4);
  CHECK_THAT(host.Describe(), Catch::Contains("kill=v2:/sys/fs/cgroup/unified/runner"));
}

TEST_CASE("co-mounted cpu,cpuacct is one hierarchy serving both roles", "[process][cgroup]") {
  const char* mountinfo =
      "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
      "26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
      "27 24 0:24 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n";
  const char* self =
      "3:cpu,cpuacct:/system.slice/runner.service\n2:memory:/system.slice\n1:freezer:/\n";
  CgroupHost host = CgroupHost::FromProcFiles(mountinfo, self, "tasks", false);
  REQUIRE(host.cpu().has_value());
  CHECK(host.cpu() == host.cpuacct());
  CHECK(host.hierarchies()[*host.cpu()].parent ==
        "/sys/fs/cgroup/cpu,cpuacct/system.slice/runner.service/tasks");
  CHECK(host.hierarchies()[*host.memory()].parent == "/sys/fs/cgroup/memory/system.slice/tasks");
  CHECK_FALSE(host.pids().has_value());
  CHECK_FALSE(host.v2().has_value());
  CHECK_THAT(host.Describe(), Catch::Contains("pids=none"));
  REQUIRE(host.freezer().has_value());  // no v2: the freezer makes kill-all reliable
  CHECK_THAT(host.Describe(), Catch::Contains("kill=v1:/sys/fs/cgroup/freezer/tasks"));
}

TEST_CASE("a pure v2 host is found from the unified mount and our own path", "[process][cgroup]") {
  const char* mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
  const char* self = "0::/user.slice/session-1.scope\n";
  CgroupHost host = CgroupHost::FromProcFiles(mountinfo, self, "runner", false);
  REQUIRE(host.v2().has_value());
  CHECK(host.hierarchies()[*host.v2()].parent ==
        "/sys/fs/cgroup/user.slice/session-1.scope/runner");
  CHECK(host.cpuacct() == host.v2());  // cpu.stat is always there on v2
}

TEST_CASE("a container's cgroup mount rooted at its own cgroup is not doubled",
          "[process][cgroup]") {
  const char* mountinfo =
      "700 690 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n";
  const char* self = "4:memory:/docker/abc\n";
  CgroupHost host = CgroupHost::FromProcFiles(mountinfo, self, "runner", false);
  REQUIRE(host.memory().has_value());
  CHECK(host.hierarchies()[*host.memory()].parent == "/sys/fs/cgroup/memory/runner");
}

TEST_CASE("escaped mount points are read back as the real path", "[process][cgroup]") {
  const char* mountinfo = "1 0 0:1 / /mnt/my\\040cgroups rw - cgroup cgroup rw,pids\n";
  CgroupHost host = CgroupHost::FromProcFiles(mountinfo, "5:pids:/\n", "r", false);
  REQUIRE(host.pids().has_value());
  CHECK(host.hierarchies()[*host.pids()].parent == "/mnt/my cgroups/r");
}

TEST_CASE("a host without cgroup mounts yields an empty description", "[process][cgroup]") {
  CgroupHost host =
      CgroupHost::FromProcFiles("1 0 0:1 / / rw - ext4 /dev/sda rw\n", "", "r", false);
  CHECK(host.empty());
  CHECK_FALSE(host.memory().has_value());
}

}  // namespace
}  // namespace runner::isolation::process
