#pragma once

// What the API layer needs from a running node: its status, and the pool's
// controls. Implemented by the pool (runner/pool/); the API only sees this
// interface, so its unit tests use a fake.
//
// Thread-safety: every method may be called from any HTTP thread at any time.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "runner/queue/queue_store.h"

namespace runner {

enum class PoolState { kRunning, kThrottled, kDraining, kStopped };
std::string_view ToString(PoolState state);

struct PoolStatus {
  PoolState state = PoolState::kStopped;
  int target = 0;
  int active = 0;  // workers alive, any state
  int idle = 0;
  int busy = 0;
  int starting = 0;
  int stopping = 0;
  int max = 0;  // --max-workers
  // Tasks running right now, by the isolation they run in.
  int running_docker = 0;
  int running_process = 0;
};

struct ResourceSample {
  double cpu_percent = 0;  // whole host, 0..100
  int64_t memory_used = 0;
  int64_t memory_total = 0;
  int64_t disk_used = 0;
  int64_t disk_total = 0;
};

struct NodeStatus {
  std::string node_id;
  std::string mode;  // docker | process | mixed
  bool docker_available = false;
  std::string docker_version;  // empty when unavailable
  // Warm Docker containers (isolation/docker/warm_pool.h): how many this
  // node keeps, and how many are ready now. Zero when off.
  struct DockerWarm {
    int target = 0;
    int ready = 0;
  } docker_warm;
  PoolStatus pool;
  ResourceSample resources;
  bool backpressure = false;
  std::optional<std::string> backpressure_reason;
  // The process tasks' sandbox (isolation/process/sandbox.h).
  struct ProcessSandbox {
    bool enabled = false;
    std::string user;  // "65534:65534"
    bool network = false;
  } process_sandbox;
};

struct StopOptions {
  bool force = false;
  std::chrono::seconds drain_timeout{60};
};

class NodeControl {
 public:
  virtual ~NodeControl() = default;
  virtual NodeStatus Status() = 0;
  // validation_failed when count is outside [1, max].
  virtual runner::Status Scale(int count) = 0;
  // Returns at once; the pool drains in the background.
  virtual void StopPool(const StopOptions& options) = 0;
  virtual void StartPool() = 0;
  // True while the pool runs (readiness).
  virtual bool Running() = 0;
  // This node's workers as they are now. The workers table learns their
  // states only at the next heartbeat (a third of the lease), so the API
  // overlays these on it. Empty when the node has none to tell.
  virtual std::vector<queue::WorkerInfo> LiveWorkers() { return {}; }
};

}  // namespace runner
