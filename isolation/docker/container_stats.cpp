#include "isolation/docker/container_stats.h"

#include <boost/json.hpp>
#include <string>

namespace runner::isolation::docker {
namespace {

namespace json = boost::json;

uint64_t U64(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return 0;
  if (v->is_uint64()) return v->as_uint64();
  if (v->is_int64()) return v->as_int64() < 0 ? 0 : static_cast<uint64_t>(v->as_int64());
  if (v->is_double()) return v->as_double() < 0 ? 0 : static_cast<uint64_t>(v->as_double());
  return 0;
}

const json::object* Obj(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v != nullptr && v->is_object() ? &v->as_object() : nullptr;
}

CpuCounters ParseCpu(const json::object* cpu_stats) {
  CpuCounters c;
  if (cpu_stats == nullptr) return c;
  c.system_usage = U64(*cpu_stats, "system_cpu_usage");
  c.online_cpus = static_cast<uint32_t>(U64(*cpu_stats, "online_cpus"));
  if (const json::object* usage = Obj(*cpu_stats, "cpu_usage")) {
    c.total_usage = U64(*usage, "total_usage");
    if (c.online_cpus == 0) {
      // Older daemons: count the per-CPU entries, as the docker CLI does.
      const json::value* per = usage->if_contains("percpu_usage");
      if (per != nullptr && per->is_array()) {
        c.online_cpus = static_cast<uint32_t>(per->as_array().size());
      }
    }
  }
  return c;
}

int64_t ToI64(uint64_t v) {
  return v > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(v);
}

}  // namespace

double CpuPercent(const CpuCounters& before, const CpuCounters& after) {
  if (after.total_usage <= before.total_usage || after.system_usage <= before.system_usage) {
    return 0;
  }
  double cpu_delta = static_cast<double>(after.total_usage - before.total_usage);
  double system_delta = static_cast<double>(after.system_usage - before.system_usage);
  uint32_t cpus = after.online_cpus != 0 ? after.online_cpus : before.online_cpus;
  if (cpus == 0) cpus = 1;
  return cpu_delta / system_delta * static_cast<double>(cpus) * 100.0;
}

int64_t MemoryWorkingSet(const json::object& memory_stats) {
  uint64_t usage = U64(memory_stats, "usage");
  uint64_t reclaimable = 0;
  if (const json::object* stats = Obj(memory_stats, "stats")) {
    if (stats->contains("cache")) {
      reclaimable = U64(*stats, "cache");  // cgroup v1
    } else {
      reclaimable = U64(*stats, "inactive_file");  // cgroup v2
    }
  }
  return reclaimable < usage ? ToI64(usage - reclaimable) : 0;
}

Result<ContainerStats> ParseContainerStats(std::string_view text) {
  boost::system::error_code ec;
  json::value doc = json::parse(json::string_view(text.data(), text.size()), ec);
  if (ec || !doc.is_object()) {
    return MakeError("internal", "the Docker daemon sent stats that are not a JSON object: " +
                                     std::string(text.substr(0, 200)));
  }
  const json::object& o = doc.as_object();
  ContainerStats s;
  s.cpu = ParseCpu(Obj(o, "cpu_stats"));
  s.precpu = ParseCpu(Obj(o, "precpu_stats"));
  if (const json::object* mem = Obj(o, "memory_stats")) {
    s.memory_usage = ToI64(U64(*mem, "usage"));
    s.memory_max_usage = ToI64(U64(*mem, "max_usage"));
    s.memory_limit = ToI64(U64(*mem, "limit"));
    s.memory = MemoryWorkingSet(*mem);
    if (const json::object* stats = Obj(*mem, "stats")) {
      s.shmem =
          ToI64(stats->contains("total_shmem") ? U64(*stats, "total_shmem") : U64(*stats, "shmem"));
    }
  }
  if (const json::object* pids = Obj(o, "pids_stats")) s.pids = ToI64(U64(*pids, "current"));
  s.empty = s.cpu.total_usage == 0 && s.memory_usage == 0;
  return s;
}

}  // namespace runner::isolation::docker
