#pragma once

// Warm containers: created and started ahead, single use, so a Docker task's
// claim skips create and start (issue #21).
//
//   WarmPool pool(client, isolator_options, {.per_image = 2, .images = {"runner-task:latest"}});
//   pool.Start();                                // after the node's first orphan reaping
//   if (auto id = pool.Take(spec, tmpfs_disk)) { // a ready container for this task, or none
//     ... update limits, ContainerAttach(*id, EncodeLaunch(spec, nonce)), follow its output ...
//   }                                            // the caller removes it after its one task
//
// Each warm container has every setting a cold task's container has
// (BuildCreateConfig with no limits: no network unless allow_network,
// read-only root, CapDrop ALL, no-new-privileges, the task user, init, tmpfs
// /work and /tmp at the default disk limit) plus the labels io.runner.node and
// io.runner.warm=<this pool's token>, stdin open (StdinOnce) and, as its
// first process, runner-warm-launcher bind-mounted read-only at
// /.runner/launch (launcher/warm_launcher.cpp): it blocks on stdin until the
// runner writes the task's argv and env, then execs it, so the task is the
// container's main process. Nothing of a task is in a warm container before
// it is taken, and no container is given to a second task.
//
// Background threads, one per refill lane (`refill_lanes`, each starting one
// container at a time), keep `per_image` ready containers per image: they
// refill after each task that took one (Release(), or `refill_after` past
// its Take(); at once while tasks come faster than containers), not while
// Pause(true) (backpressure), and when the daemon fails a call the pool drops
// every ready container (removed once the daemon answers) and lane 0 tries
// again every `retry`, so a Docker outage or restart leaves no stale
// container in the pool. Every `check_every` lane 0 lists its containers and
// drops any that is no longer running.
//
// Thread-safety: every method may be called from any thread.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"
#include "isolation/docker/docker_isolator.h"
#include "isolation/docker/engine_client.h"
#include "isolation/isolator.h"

namespace runner::isolation::docker {

struct WarmPoolOptions {
  int per_image = 0;                // ready containers kept per image; 0 = off
  std::vector<std::string> images;  // the node's default task image first
  std::string node_id;              // io.runner.node of every warm container
  std::chrono::milliseconds retry{1000};
  std::chrono::milliseconds check_every{5000};
  // A taken container's replacement starts when its task ends (Release), or
  // this long after it was taken, whichever comes first: creating it while
  // a short task runs would compete with that task for the daemon.
  std::chrono::milliseconds refill_after{1000};
  // ... unless a task found no ready container within this long: then tasks
  // come faster than containers and a replacement starts at once.
  std::chrono::milliseconds burst_memory{10000};
  // How long Take() waits for a container being started when none is ready
  // (0: never; the task starts cold at once). A waiting taker has a start of
  // its own begun on a free lane (at most `refill_lanes` takers wait per
  // image; others go cold) and takes the first container that is ready.
  std::chrono::milliseconds in_flight_wait{0};
  // Starts in flight at once (each a create and start; one thread each).
  // One lane serialised every refill: a task that waited for it waited for
  // the whole create and start.
  int refill_lanes = 2;
};

struct WarmStats {
  int target = 0;  // per_image * images
  int ready = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;  // Docker tasks that took the cold path while the pool was on
};

// The launcher's message for a task: u32 length (LE), then NUL-terminated
// strings: the nonce of its exit report (log_frames.h ExitReportScanner),
// argc, argv and NAME=VALUE env entries (launcher/warm_launcher.cpp). Pure.
std::string EncodeLaunch(const TaskSpec& spec, const std::string& report_nonce);

// The create body of a warm container (see the header comment). `entrypoint`
// is the image's ENTRYPOINT, passed to the launcher. Pure; unit tested.
boost::json::object BuildWarmConfig(const std::string& image,
                                    const std::vector<std::string>& entrypoint,
                                    const DockerIsolatorOptions& options,
                                    const std::string& node_id, const std::string& token,
                                    const std::string& launcher_path);

class WarmPool {
 public:
  WarmPool(EngineClient& client, const DockerIsolatorOptions& isolator_options,
           WarmPoolOptions options);
  // Stops the refill thread and removes every container it still holds.
  ~WarmPool();
  WarmPool(const WarmPool&) = delete;
  WarmPool& operator=(const WarmPool&) = delete;

  // Starts filling (writes the launcher, starts the refill thread).
  Status Start();
  // Stops filling and removes every ready container (graceful and forced stop).
  void Stop();

  // A ready container for `spec` (its image is warmed, and the disk it may
  // write is what a warm container has: `tmpfs_disk` says the task's disk
  // limit is served by the default-size tmpfs), or nullopt. With
  // in_flight_wait, waits that long for one being started when none is ready. The caller owns
  // the container from then on. Counts a hit or a miss.
  std::optional<std::string> Take(const TaskSpec& spec, bool tmpfs_disk);
  // Counts a Docker task that could not use a container it took (the cold
  // path ran it).
  void CountFallback();
  // The task of a container from Take() has ended (the caller removes the
  // container): its replacement may start now.
  void Release(const std::string& image, const std::string& id);

  // Backpressure: no refill while paused (ready containers stay).
  void Pause(bool paused);
  // The daemon failed a call: drop the ready containers now.
  void DaemonFailed();

  WarmStats Stats() const;
  // Whether `labels` mark a container of this pool (the orphan reaper spares them).
  bool Owns(const std::map<std::string, std::string>& labels) const;
  const std::string& token() const { return token_; }
  const std::string& launcher_path() const { return launcher_path_; }

 private:
  // One refill lane; lane 0 also removes dropped containers, checks the
  // ready ones and pings a failed daemon.
  void Loop(std::stop_token stop, int lane);
  // Creates and starts one warm container of `image`; its id.
  Result<std::string> StartOne(const std::string& image);
  // Moves every ready container to the removal list (under mu_).
  void DropReadyLocked();
  void RemoveDropped();
  void CheckAlive();
  // Taken containers of `image` whose replacement waits (under mu_).
  int DeferredLocked(const std::string& image, std::chrono::steady_clock::time_point now) const;

  EngineClient& client_;
  const DockerIsolatorOptions& iso_;
  WarmPoolOptions options_;
  std::string token_;
  std::string launcher_dir_;
  std::string launcher_path_;

  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::map<std::string, std::deque<std::string>> ready_;         // image -> ids; guarded by mu_
  std::map<std::string, std::vector<std::string>> entrypoints_;  // guarded by mu_
  // image -> id -> when taken, until Release(); guarded by mu_
  std::map<std::string, std::map<std::string, std::chrono::steady_clock::time_point>> in_use_;
  std::map<std::string, int> starting_;              // starts in flight per image; guarded by mu_
  std::map<std::string, int> waiting_;               // takers waiting for them; guarded by mu_
  uint64_t start_failures_ = 0;                      // guarded by mu_
  std::chrono::steady_clock::time_point last_miss_;  // guarded by mu_
  bool stopping_ = false;                            // guarded by mu_
  std::vector<std::string> dropped_;                 // to remove; guarded by mu_
  bool paused_ = false;                              // guarded by mu_
  bool failed_ = false;                              // guarded by mu_
  uint64_t hits_ = 0;                                // guarded by mu_
  uint64_t misses_ = 0;                              // guarded by mu_
  std::vector<std::jthread> threads_;                // one per refill lane
};

}  // namespace runner::isolation::docker
