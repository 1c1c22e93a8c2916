#pragma once

// One task's container from the moment its process may run until its result:
// like process TaskRun, it owns the per-task threads and state, the caller owns
// the container (create, removal) and how its process begins.
//
//   ContainerRun run(client, options, spec, id, storage_opt);
//   if (Status w = run.RegisterWait(); !w) ...       // before anything can exit
//   if (Status st = client.ContainerStart(id); !st) ...   // or hand a warm one its task
//   RunResult r = run.Follow(observer, stop);
//
// Follow() streams the logs to the observer, samples stats every
// `stats_interval` (usage and the over-limit policy), waits for the exit,
// stopping the container on timeout (spec.timeout from the call), cancel or a
// kill by the policy, and maps the end to a RunResult: exit code, OOMKilled
// (from inspect), ENOSPC on the tmpfs as over_limit, usage.
//
// Thread-safety: one thread calls RegisterWait() then Follow(); the observer's
// callbacks come from several internal threads, never concurrently.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>

#include "base/result.h"
#include "isolation/docker/docker_isolator.h"
#include "isolation/docker/engine_client.h"
#include "isolation/isolator.h"

namespace runner::isolation::docker {

// A RunResult of kind kError for `e`, isolation "docker".
RunResult DockerErrorResult(const Error& e);

class ContainerRun {
 public:
  ContainerRun(EngineClient& client, const DockerIsolatorOptions& options, const TaskSpec& spec,
               std::string id, bool storage_opt);
  ~ContainerRun();
  ContainerRun(const ContainerRun&) = delete;
  ContainerRun& operator=(const ContainerRun&) = delete;

  // Registers `wait?condition=next-exit`, so an exit right after start is seen.
  Status RegisterWait();
  // The container's output comes on this attached stream (a warm
  // container's, ContainerAttach) instead of a logs follow stream: one call
  // fewer. The warm launcher ends it with its exit report, tagged with
  // `report_nonce` (log_frames.h ExitReportScanner): a report of 0 ends the
  // task as soon as it and the output it counts have come, without waiting
  // for the daemon's exit report. Before Follow().
  void UseAttachedOutput(std::unique_ptr<AttachedOutput> output, std::string report_nonce) {
    attached_ = std::move(output);
    report_nonce_ = std::move(report_nonce);
  }
  // Follows the running container to its end (see the header comment).
  RunResult Follow(Observer& observer, std::stop_token stop);

  const std::string& id() const { return id_; }

  // When Follow() saw the exit and when the output stream ended (the
  // isolator's phase log).
  std::chrono::steady_clock::time_point exit_seen_at;
  std::chrono::steady_clock::time_point logs_ended_at;

 private:
  struct Shared;  // what the log and stats threads share with Follow()
  enum class Ending { kNone, kTimeout, kStop, kKill };  // what we did to end it
  struct Exit {
    Ending ending = Ending::kNone;
    std::optional<int64_t> status_code;  // set when the daemon (or the launcher) reported the exit
    bool launcher_reported = false;      // the warm launcher's report of 0 ended it
    std::optional<Error> wait_error;
    std::chrono::steady_clock::time_point finished_at;
  };

  // The log stream, to the observer (and ENOSPC spotted), until stopped or the end.
  void LogsLoop(Shared& shared, std::stop_token st);
  // A stats sample every stats_interval: usage and the over-limit policy.
  void StatsLoop(Shared& shared, std::stop_token st);
  // Waits for the exit, stopping the container on timeout, cancel or a kill by the policy.
  Exit WaitForExit(Shared& shared, std::stop_token stop,
                   std::chrono::steady_clock::time_point started);
  // The result of an exit the daemon reported: exit code, OOM, disk, how it was ended.
  RunResult Outcome(Shared& shared, const Exit& exit, RunResult result);

  EngineClient& client_;
  const DockerIsolatorOptions& options_;
  const TaskSpec& spec_;
  std::string id_;
  bool storage_opt_;
  std::unique_ptr<PendingWait> waiter_;
  std::unique_ptr<AttachedOutput> attached_;
  std::string report_nonce_;
};

}  // namespace runner::isolation::docker
