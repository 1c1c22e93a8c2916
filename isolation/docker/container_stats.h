#pragma once

// Docker container stats (GET /containers/{id}/stats) reduced to the numbers
// the isolator needs, computed the way the docker CLI does:
//   CPU%   = Δ cpu_usage.total_usage / Δ system_cpu_usage × online_cpus × 100
//   memory = usage − cache (cgroup v1) or usage − inactive_file (cgroup v2)
// Pure functions; unit tested.
//
// Thread-safety: value types and pure functions.

#include <boost/json/fwd.hpp>
#include <cstdint>
#include <string_view>

#include "base/result.h"

namespace runner::isolation::docker {

struct CpuCounters {
  uint64_t total_usage = 0;   // ns of CPU time used by the container, cumulative
  uint64_t system_usage = 0;  // ns of host CPU time (all cores), cumulative
  uint32_t online_cpus = 0;
};

struct ContainerStats {
  CpuCounters cpu;
  CpuCounters precpu;            // empty for one-shot samples
  int64_t memory = 0;            // working set: usage minus reclaimable cache
  int64_t memory_usage = 0;      // raw usage
  int64_t memory_max_usage = 0;  // cgroup v1 only, 0 otherwise
  int64_t memory_limit = 0;
  int64_t shmem = 0;  // tmpfs/shared memory pages charged to the container
  int64_t pids = 0;
  bool empty = true;  // the daemon sent zeros (container not running)
};

// CPU percent between two cumulative samples; 100 = one core. 0 when either
// delta is not positive.
double CpuPercent(const CpuCounters& before, const CpuCounters& after);

// usage − cache (v1) or usage − inactive_file (v2), never negative.
int64_t MemoryWorkingSet(const boost::json::object& memory_stats);

// Parses one stats JSON document. Error{"internal"} if it is not JSON.
Result<ContainerStats> ParseContainerStats(std::string_view json);

}  // namespace runner::isolation::docker
