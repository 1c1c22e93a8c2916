#pragma once

// Everything one `runner serve` node runs, built from the Config: the
// PostgreSQL store (migrated at open), the NOTIFY listener that wakes the
// claimer and the cancel watcher, the isolators (process always; Docker
// unless mode is process) behind the IsolationSelector, the host pressure
// monitor and the worker pool. It is the NodeControl the API serves.
//
//   metrics::Registry registry;
//   auto node = runner::node::Node::Create(config, conninfo, registry);
//   if (!node) { ...node.error()... }
//   (*node)->Start();                        // registers the node, starts workers
//   ApiServer server(options, (*node)->store(), **node, registry);
//   ...
//   (*node)->Shutdown({.force = false, .drain_timeout = 60s});  // SIGTERM
//   (*node)->Shutdown({.force = true});  // a second signal: interrupts the drain
//
// Thread-safety: every method may be called from any thread. Shutdown blocks
// until the pool is drained and every thread joined; it is idempotent, and a
// force Shutdown interrupts a graceful one in progress. StopPool/StartPool
// return at once; they run in order on a control thread.

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "base/result.h"
#include "isolation/docker/docker_isolator.h"
#include "isolation/process/process_isolator.h"
#include "isolation/selector.h"
#include "runner/config.h"
#include "runner/metrics/registry.h"
#include "runner/node/node_control.h"
#include "runner/pool/pool.h"
#include "runner/pressure/monitor.h"
#include "runner/queue/notify_listener.h"
#include "runner/queue/postgres_store.h"
#include "runner/schedule/scheduler.h"

namespace runner::node {

// Test seams; production uses the defaults.
struct NodeHooks {
  // Replaces the /proc reader of the pressure monitor.
  std::unique_ptr<pressure::ResourceSource> resources;
  // Replaces the isolators (e.g. a cheap fake for queue throughput tests).
  isolation::Isolator* isolator_override = nullptr;
  // Tweaks the pool's options after they were derived from the Config.
  std::function<void(pool::PoolOptions&)> tune;
};

class Node : public NodeControl {
 public:
  static Result<std::unique_ptr<Node>> Create(const Config& config, std::string conninfo,
                                              metrics::Registry& metrics);
  static Result<std::unique_ptr<Node>> Create(const Config& config, std::string conninfo,
                                              metrics::Registry& metrics, NodeHooks hooks);
  ~Node() override;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Starts the monitor, the listener and the pool (registers node and workers).
  runner::Status Start();
  // Blocking: drains (or forces), then joins everything. Idempotent.
  void Shutdown(const StopOptions& options);

  queue::QueueStore& store();
  queue::PostgresStore& postgres() { return *store_; }
  pool::Pool& pool() { return *pool_; }
  schedule::ScheduleStore& schedules() { return *schedules_; }
  const std::string& node_id() const { return node_id_; }
  // True while the LISTEN connection is up.
  bool Listening() const;

  // NodeControl
  NodeStatus Status() override;
  runner::Status Scale(int count) override;
  void StopPool(const StopOptions& options) override;
  void StartPool() override;
  bool Running() override;
  std::vector<queue::WorkerInfo> LiveWorkers() override;
  // Waits until every pool command given so far has been applied (tests, and
  // anyone who must read the outcome of a command). False after `timeout`.
  bool AwaitControl(std::chrono::milliseconds timeout);

 private:
  Node(const Config& config, std::string conninfo, metrics::Registry& metrics);
  void OnNotify(std::string_view channel, std::string_view payload);
  void OnSample(const ResourceSample& sample);
  void RefreshDockerVersion();
  // Warm Docker containers fill while the pool runs; a stopped pool has none.
  void StartWarm();
  void StopWarm();
  // Runs `op` on the control thread after the previous control op.
  void Control(std::function<void()> op);

  const Config config_;
  const std::string conninfo_;
  metrics::Registry& metrics_;
  const std::string node_id_;
  metrics::Gauge& docker_gauge_;

  std::unique_ptr<queue::PostgresStore> store_;
  std::unique_ptr<isolation::process::ProcessIsolator> process_;
  std::unique_ptr<isolation::docker::DockerIsolator> docker_;
  std::unique_ptr<isolation::IsolationSelector> selector_;
  isolation::Isolator* override_ = nullptr;
  std::unique_ptr<pool::Pool> pool_;
  std::unique_ptr<schedule::ScheduleStore> schedules_;
  std::unique_ptr<schedule::Scheduler> scheduler_;  // fires due schedules
  std::unique_ptr<pressure::Monitor> monitor_;

  mutable std::mutex listener_mu_;
  std::unique_ptr<queue::NotifyListener> listener_;  // guarded by listener_mu_

  std::mutex docker_mu_;
  std::string docker_version_;  // guarded by docker_mu_

  std::mutex control_mu_;
  std::jthread control_;  // guarded by control_mu_; the latest control op
  // Pool commands apply in the order given. A force stop acts at once (it must
  // interrupt a drain), so a start given before it but not yet applied is
  // dropped: it would otherwise run after the stop and leave the pool running.
  uint64_t control_seq_ = 0;  // guarded by control_mu_
  std::atomic<uint64_t> last_force_stop_seq_{0};

  std::mutex shutdown_mu_;
  std::atomic<bool> shutting_down_{false};
  bool shut_down_ = false;  // guarded by shutdown_mu_
  bool started_ = false;    // guarded by shutdown_mu_
};

}  // namespace runner::node
