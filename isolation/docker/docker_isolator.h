#pragma once

// Runs each task in its own fresh Docker container through the Engine API.
//
//   runner::isolation::docker::DockerIsolatorOptions options;
//   options.docker_host = config.docker_host;       // unix:///var/run/docker.sock
//   runner::isolation::docker::DockerIsolator docker(options);
//   docker.ReapOrphans({node_id});                  // at start, before claiming
//   RunResult r = docker.Run(spec, observer, stop_token);
//
// Per task: image inspect (cached for a minute; missing -> kError/image_not_found), create with
// HostConfig limits (NanoCpus, Memory = MemorySwap, PidsLimit, NetworkMode none
// unless allow_network, ReadonlyRootfs, CapDrop ALL, no-new-privileges, Init,
// a non-root user), labels io.runner.task / io.runner.worker / io.runner.node
// (+ io.runner.label.<k> for task labels), then ContainerRun
// (container_run.h): wait registered before start, logs streamed to the observer, stats sampled
// every `stats_interval` (usage and the over-limit policy), then exit code / OOMKilled / usage. The
// container is removed (force) on every path, by a background queue once Run() has its result (so
// the removal overlaps the next task's claim and create; at most 64 wait, past that Run() removes
// its own). WaitForCleanup() waits for the queue; the destructor drains it. A removal that finds
// the daemon gone is retried after the next create that reaches it (see RemovalState), and once
// more when the isolator is destroyed. A crash leaves the exited containers
// to ReapOrphans, like running ones.
//
// Disk limit: StorageOpt size where the daemon's storage driver supports it
// (overlay2 on xfs with pquota; detected from /info and by trying once);
// otherwise size-capped tmpfs at /work and /tmp on a read-only root (each
// `limits.disk`, or `default_tmpfs_bytes` when the task has no disk limit).
// tmpfs pages count against the memory limit. Writing past the limit ends
// the task as kOverLimit / over_limit when it fails with ENOSPC.
//
// Thread-safety: Run(), Available(), EngineVersion() and ReapOrphans() may be
// called concurrently from any number of threads. Observer callbacks of one
// Run() come from several internal threads but never concurrently.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/result.h"
#include "isolation/cleanup_queue.h"
#include "isolation/docker/engine_client.h"
#include "isolation/isolator.h"

namespace runner::isolation::docker {

struct DockerIsolatorOptions {
  std::string docker_host = "unix:///var/run/docker.sock";
  bool allow_network = false;  // NetworkMode "none" unless the operator allows the default bridge
  OverLimitPolicy over_limit;
  // SIGTERM, then SIGKILL after this (kept to the millisecond: Docker's own
  // stop takes whole seconds, so a --kill-grace of 0.5 was 1 s in Docker).
  std::chrono::milliseconds stop_grace{10000};
  // Tasks run as this user (the task image has 65534 = nobody). Empty = the
  // image's default user.
  std::string user = "65534:65534";
  std::chrono::milliseconds stats_interval{1000};
  int64_t default_tmpfs_bytes =
      64LL * 1024 * 1024;  // /work and /tmp when the task has no disk limit
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds call_timeout{30000};
  std::chrono::milliseconds available_cache{1500};  // how long Available() trusts its last /_ping
  // Warm containers (warm_pool.h): `warm_per_image` ready per image of
  // `warm_images` (the default task image first); 0 = off, every task cold.
  // `node_id` labels them. The pool fills once StartWarmPool() is called.
  int warm_per_image = 0;
  std::vector<std::string> warm_images;
  // The disk limit warm containers' tmpfs /work and /tmp have (the node's
  // default for tasks; 0 = default_tmpfs_bytes). Tasks with the same limit, or
  // none when this is 0, match.
  int64_t warm_disk = 0;
  // How long a task that finds no warm container ready waits for one being
  // started (0: it runs cold at once), and how many starts run at once
  // (WarmPoolOptions::in_flight_wait, refill_lanes). A replacement started at
  // the last take is nearer than a cold create and start, which would compete
  // with it for the daemon: on a quiet 2-core host, back-to-back `true` tasks
  // at 1 worker ran 1.38-1.45x cold with this wait and 1.24-1.35x without
  // (every other task cold), 1.18x against 1.09x at 4 (bench/docker/run
  // --alt-wait). Bounded: past it, or when the start fails, the task runs cold.
  std::chrono::milliseconds warm_wait{1000};
  int warm_lanes = 2;
  std::string node_id;
};

class WarmPool;
struct WarmStats;

// What the removals of one isolator share. A removal that finds the daemon
// unreachable is kept in `retry` and queued again by the next Run() that
// reaches the daemon. Once the isolator is draining (being destroyed), the
// first such failure leaves the rest to ReapOrphans: one timeout, not one per
// pending container, bounds a shutdown against a hung daemon.
struct RemovalState {
  std::atomic<bool> draining{false};
  std::atomic<bool> give_up{false};
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> retry;  // (container, task); guarded by mu
};

// Removes one container (force) when destroyed; the job of the removal queue.
class ContainerRemoval {
 public:
  ContainerRemoval(EngineClient& client, RemovalState& state, std::string id, std::string task_id)
      : client_(&client), state_(&state), id_(std::move(id)), task_id_(std::move(task_id)) {}
  ContainerRemoval(ContainerRemoval&& other) noexcept;
  ContainerRemoval& operator=(ContainerRemoval&&) = delete;
  ContainerRemoval(const ContainerRemoval&) = delete;
  ContainerRemoval& operator=(const ContainerRemoval&) = delete;
  ~ContainerRemoval();
  const std::string& id() const { return id_; }

 private:
  static constexpr std::size_t kMaxRetries = 1000;  // past that, left to ReapOrphans
  EngineClient* client_;
  RemovalState* state_;
  std::string id_;  // empty once moved from
  std::string task_id_;
};

class DockerIsolator : public Isolator {
 public:
  explicit DockerIsolator(DockerIsolatorOptions options = {});
  ~DockerIsolator() override;

  std::string_view Name() const override { return "docker"; }
  // A cached /_ping (answer trusted for options.available_cache).
  bool Available() override;
  RunResult Run(const TaskSpec& spec, Observer& observer, std::stop_token stop) override;

  // "20.10.24+dfsg1 (API 1.41)", or the error message when the daemon is unreachable.
  std::string EngineVersion();
  // Removes every container labelled io.runner.node=<id> for the given ids
  // (this node at start, or nodes the database knows are dead). Never touches
  // other containers. Returns how many were removed.
  Result<int> ReapOrphans(const std::vector<std::string>& node_ids);

  // Blocks until the containers of every finished Run() are removed.
  void WaitForCleanup();

  // Warm containers: start filling (call after the node's first orphan
  // reaping), stop (removes the ready ones: graceful and forced stop),
  // pause refilling (backpressure), and what the pool holds (nullopt: off).
  Status StartWarmPool();
  void StopWarmPool();
  void PauseWarmPool(bool paused);
  // Docker went away: drop the ready containers (rebuilt once it answers).
  void DropWarmPool();
  std::optional<WarmStats> WarmStatus() const;
  // Called once per task that got its process started: whether it took a warm
  // container, and the seconds from Run() to its process starting. Set before
  // the first Run().
  using StartObserver = std::function<void(bool warm, double seconds)>;
  void SetStartObserver(StartObserver observer) { start_observer_ = std::move(observer); }

  EngineClient& client() { return client_; }
  const DockerIsolatorOptions& options() const { return options_; }

 private:
  // Whether StorageOpt size is honoured by the daemon (decided once).
  bool StorageOptSupported();
  void MarkStorageOptUnsupported();
  // A call that could not reach the daemon (isolation_unavailable) makes the
  // next Available() ask again instead of trusting its cached answer, so the
  // pool sees the outage at once.
  void ForgetAvailability(const Error& e);
  Status CheckImage(const std::string& image);
  // Queues again the removals that found the daemon unreachable.
  void RetryFailedRemovals();
  // The warm path; nullopt when the container could not take the task (the
  // cold path runs it then).
  std::optional<RunResult> RunWarm(const TaskSpec& spec, const std::string& id, Observer& observer,
                                   std::stop_token stop, std::chrono::steady_clock::time_point t0);
  void ReportStart(bool warm, std::chrono::steady_clock::time_point t0);

  DockerIsolatorOptions options_;
  EngineClient client_;

  std::mutex mu_;
  std::chrono::steady_clock::time_point available_checked_;  // guarded by mu_
  bool available_ = false;                                   // guarded by mu_
  std::optional<bool> storage_opt_;                          // guarded by mu_
  // Images seen present recently: skips an inspect per task (a removed image
  // still ends as image_not_found, from create's 404).
  std::map<std::string, std::chrono::steady_clock::time_point> images_seen_;  // guarded by mu_
  RemovalState removal_state_;
  StartObserver start_observer_;
  // Before removals_: its containers are handed to the queue or removed by it.
  std::unique_ptr<WarmPool> warm_;
  // Last: drained (every pending container removed) while client_ still exists.
  CleanupQueue<ContainerRemoval> removals_;
};

// The Docker container configuration (POST /containers/create body) for a
// task. Pure; unit tested. `storage_opt` chooses StorageOpt size over tmpfs.
boost::json::object BuildCreateConfig(const TaskSpec& spec, const DockerIsolatorOptions& options,
                                      bool storage_opt);

}  // namespace runner::isolation::docker
