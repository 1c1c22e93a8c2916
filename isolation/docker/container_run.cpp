#include "isolation/docker/container_run.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

namespace runner::isolation::docker {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kEnospc = "No space left on device";

std::string Bytes(int64_t n) { return std::to_string(n) + " bytes"; }

std::string_view ActionName(OverLimitAction a) {
  switch (a) {
    case OverLimitAction::kThrottle:
      return "throttle";
    case OverLimitAction::kKill:
      return "kill";
    case OverLimitAction::kWarn:
      break;
  }
  return "warn";
}

// Serialises the callbacks of one Run() (the Observer contract).
class SerialObserver {
 public:
  explicit SerialObserver(Observer& inner) : inner_(inner) {}
  void OnStarted(std::string_view handle) {
    std::lock_guard lock(mu_);
    inner_.OnStarted("docker", handle);
  }
  void OnOutput(OutputStream stream, std::string_view data) {
    std::lock_guard lock(mu_);
    inner_.OnOutput(stream, data);
  }
  void OnUsage(const UsageSample& sample) {
    std::lock_guard lock(mu_);
    inner_.OnUsage(sample);
  }
  void OnOverLimit(std::string_view resource, OverLimitAction action, std::string_view message) {
    std::lock_guard lock(mu_);
    inner_.OnOverLimit(resource, action, message);
  }

 private:
  std::mutex mu_;
  Observer& inner_;
};

}  // namespace

RunResult DockerErrorResult(const Error& e) { return RunError("docker", e.code, e.message); }

struct ContainerRun::Shared {
  explicit Shared(Observer& observer) : obs(observer) {}
  SerialObserver obs;
  std::mutex state_mu;
  std::string thread_error;  // guarded by state_mu
  std::string kill_reason;   // guarded by state_mu; set by the over-limit policy
  std::atomic<bool> kill_requested{false};
  std::atomic<bool> saw_enospc{false};
  std::atomic<int> reported_status{-1};  // the warm launcher's exit report, once complete
  UsageSample last_sample;               // guarded by state_mu
  int64_t peak_memory = 0;               // guarded by state_mu
  int64_t peak_max_usage = 0;            // guarded by state_mu
};

ContainerRun::ContainerRun(EngineClient& client, const DockerIsolatorOptions& options,
                           const TaskSpec& spec, std::string id, bool storage_opt)
    : client_(client),
      options_(options),
      spec_(spec),
      id_(std::move(id)),
      storage_opt_(storage_opt) {}

ContainerRun::~ContainerRun() = default;

Status ContainerRun::RegisterWait() {
  auto waiter = client_.ContainerWaitBegin(id_);
  if (!waiter) return waiter.error();
  waiter_ = std::move(*waiter);
  return {};
}

RunResult ContainerRun::Follow(Observer& observer, std::stop_token stop) {
  const std::string& task = spec_.task_id;
  RunResult result;
  result.isolation = "docker";
  Shared shared(observer);
  const auto started = Clock::now();
  spdlog::debug("docker started task={} worker={} container={}", task, spec_.worker_id,
                id_.substr(0, 12));
  shared.obs.OnStarted(id_);

  std::promise<void> logs_finished;
  auto logs_done = logs_finished.get_future();
  std::jthread logs_thread([&, finished = std::move(logs_finished)](std::stop_token st) mutable {
    LogsLoop(shared, st);
    finished.set_value();
  });
  std::jthread stats_thread([&](std::stop_token st) { StatsLoop(shared, st); });

  Exit exit = WaitForExit(shared, stop, started);

  // The follow stream ends by itself when the container exits; give it a
  // moment to deliver the last output, then stop it.
  exit_seen_at = Clock::now();
  if (exit.status_code) logs_done.wait_for(std::chrono::seconds(5));
  logs_ended_at = Clock::now();
  logs_thread.request_stop();
  stats_thread.request_stop();
  logs_thread.join();
  stats_thread.join();

  {
    std::lock_guard lock(shared.state_mu);
    result.usage.cpu_seconds = shared.last_sample.cpu_seconds;
    // max_usage (cgroup v1) catches peaks between samples; it includes page
    // cache, so it can exceed the working set the samples report.
    result.usage.peak_memory = std::max(shared.peak_memory, shared.peak_max_usage);
    result.usage.duration = std::chrono::duration<double>(exit.finished_at - started).count();
    if (!shared.thread_error.empty()) {
      return DockerErrorResult(MakeError("internal", "task " + task + ": " + shared.thread_error));
    }
  }
  if (exit.wait_error) {
    RunResult r = DockerErrorResult(*exit.wait_error);
    r.usage = result.usage;
    return r;
  }
  return Outcome(shared, exit, std::move(result));
}

void ContainerRun::LogsLoop(Shared& shared, std::stop_token st) {
  const std::string& task = spec_.task_id;
  const std::string& id = id_;
  SerialObserver& obs = shared.obs;
  std::string window;  // tail of stderr+stdout to spot ENOSPC across chunk borders
  auto sink = [&](FrameStream s, std::string_view data) {
    if (s == FrameStream::kError) {
      spdlog::warn("docker log stream error task={} message={}", task, data);
      return;
    }
    if (!shared.saw_enospc.load()) {
      window.append(data.substr(data.size() > 256 ? data.size() - 256 : 0));
      if (window.find(kEnospc) != std::string::npos) shared.saw_enospc = true;
      if (window.size() > 256) window.erase(0, window.size() - 64);
    }
    obs.OnOutput(s == FrameStream::kStderr ? OutputStream::kStderr : OutputStream::kStdout, data);
  };
  // A warm container: its launcher's exit report is taken out of the output;
  // once it says 0 and all the output it counts has come, the task is over.
  std::optional<ExitReportScanner> scanner;
  if (attached_ && !report_nonce_.empty()) scanner.emplace(report_nonce_);
  std::stop_source done;
  std::stop_callback stop_done(st, [&done] { done.request_stop(); });
  const FrameSink to_observer = sink;
  const FrameSink scanning = [&](FrameStream s, std::string_view data) {
    scanner->Feed(s, data, to_observer);
    if (auto status = scanner->Status(); status && shared.reported_status.load() < 0) {
      shared.reported_status = *status;
      if (*status == 0) done.request_stop();
    }
  };
  try {
    Status ls = attached_ ? attached_->Follow(scanner ? scanning : to_observer, done.get_token(),
                                              Clock::time_point::max())
                          : client_.ContainerLogs(id, LogsOptions{}, to_observer, st,
                                                  Clock::time_point::max());
    if (scanner) scanner->Flush(to_observer);
    if (!ls && ls.error().code != "cancelled") {
      spdlog::warn("docker logs ended early task={} error={}", task, ls.error().message);
    }
  } catch (const std::exception& e) {
    std::lock_guard lock(shared.state_mu);
    shared.thread_error = e.what();
  }
}

void ContainerRun::StatsLoop(Shared& shared, std::stop_token st) {
  const std::string& task = spec_.task_id;
  const std::string& id = id_;
  const TaskSpec& spec = spec_;
  const bool storage_opt = storage_opt_;
  SerialObserver& obs = shared.obs;
  std::condition_variable_any stats_cv;
  std::mutex stats_mu;
  try {
    std::optional<CpuCounters> prev;
    bool warned_cpu = false, warned_mem = false, warned_disk = false;
    double current_cpus = spec.limits.cpus;
    auto over = [&](std::string_view resource, bool& done, const std::string& message) {
      if (done) return;
      done = true;
      OverLimitAction action = options_.over_limit.action;
      spdlog::warn("docker over limit task={} container={} resource={} action={} message={}", task,
                   id.substr(0, 12), resource, ActionName(action), message);
      if (action == OverLimitAction::kThrottle) {
        double target = current_cpus > 0 ? current_cpus / 2 : 0.5;
        target = std::max(target, 0.01);
        json::object res{{"NanoCpus", static_cast<int64_t>(std::llround(target * 1e9))}};
        if (Status us = client_.ContainerUpdate(id, res); us) {
          current_cpus = target;
        } else {
          spdlog::warn("docker throttle failed task={} error={}", task, us.error().message);
        }
      } else if (action == OverLimitAction::kKill) {
        std::lock_guard lock(shared.state_mu);
        if (shared.kill_reason.empty()) shared.kill_reason = message;
        shared.kill_requested = true;
      }
      obs.OnOverLimit(resource, action, message);
    };
    while (!st.stop_requested()) {
      {
        std::unique_lock lock(stats_mu);
        if (stats_cv.wait_for(lock, st, options_.stats_interval, [] { return false; })) break;
      }
      if (st.stop_requested()) break;
      auto stats = client_.ContainerStatsOnce(id);
      if (!stats || stats->empty) continue;
      UsageSample sample;
      sample.cpu_seconds = static_cast<double>(stats->cpu.total_usage) / 1e9;
      sample.cpu_percent = prev ? CpuPercent(*prev, stats->cpu) : 0;
      sample.memory = stats->memory;
      sample.disk = storage_opt ? 0 : stats->shmem;
      sample.pids = stats->pids;
      prev = stats->cpu;
      {
        std::lock_guard lock(shared.state_mu);
        shared.last_sample = sample;
        shared.peak_memory = std::max(shared.peak_memory, sample.memory);
        shared.peak_max_usage = std::max(shared.peak_max_usage, stats->memory_max_usage);
      }
      obs.OnUsage(sample);
      double soft = options_.over_limit.soft_fraction;
      if (spec.limits.memory > 0 &&
          static_cast<double>(sample.memory) >= soft * static_cast<double>(spec.limits.memory)) {
        over("memory", warned_mem,
             "uses " + Bytes(sample.memory) + " of its memory limit of " +
                 Bytes(spec.limits.memory));
      }
      if (spec.limits.cpus > 0 && prev && sample.cpu_percent >= soft * spec.limits.cpus * 100) {
        over("cpu", warned_cpu,
             "uses " + std::to_string(static_cast<int>(sample.cpu_percent)) +
                 "% CPU with a limit of " +
                 std::to_string(static_cast<int>(spec.limits.cpus * 100)) + "%");
      }
      if (spec.limits.disk > 0 && sample.disk > 0 &&
          static_cast<double>(sample.disk) >= soft * static_cast<double>(spec.limits.disk)) {
        over("disk", warned_disk,
             "wrote " + Bytes(sample.disk) + " of its disk limit of " + Bytes(spec.limits.disk));
      }
    }
  } catch (const std::exception& e) {
    std::lock_guard lock(shared.state_mu);
    shared.thread_error = e.what();
  }
}

ContainerRun::Exit ContainerRun::WaitForExit(Shared& shared, std::stop_token stop,
                                             Clock::time_point started) {
  const std::string& task = spec_.task_id;
  const std::string& id = id_;
  const TaskSpec& spec = spec_;
  Exit exit;
  Ending& ending = exit.ending;
  std::optional<int64_t>& status_code = exit.status_code;
  std::optional<Error>& wait_error = exit.wait_error;
  Clock::time_point& finished_at = exit.finished_at;
  const auto timeout_at =
      spec.timeout.count() > 0 ? started + spec.timeout : Clock::time_point::max();
  Clock::time_point give_up = Clock::time_point::max();
  // SIGTERM is sent at the ending, SIGKILL at kill_at: both by us, not by
  // POST /stop, whose grace is whole seconds and which blocks this loop for it.
  Clock::time_point kill_at = Clock::time_point::max();
  while (true) {
    // A warm task's exit report comes from the log thread: looked for every
    // 2 ms in its first second (short tasks), every 50 ms after.
    const bool early = attached_ && Clock::now() - started < std::chrono::seconds(1);
    auto polled = waiter_->Poll(std::chrono::milliseconds(early ? 2 : 50));
    if (!polled) {
      wait_error = polled.error();
      break;
    }
    if (polled->has_value()) {
      status_code = **polled;
      finished_at = Clock::now();
      break;
    }
    if (ending == Ending::kNone && shared.reported_status.load() == 0) {
      status_code = 0;
      exit.launcher_reported = true;
      finished_at = Clock::now();
      break;
    }
    if (ending == Ending::kNone) {
      if (stop.stop_requested()) {
        ending = Ending::kStop;
      } else if (Clock::now() >= timeout_at) {
        ending = Ending::kTimeout;
      } else if (shared.kill_requested.load()) {
        ending = Ending::kKill;
      }
      if (ending != Ending::kNone) {
        const bool at_once = ending == Ending::kKill || options_.stop_grace.count() <= 0;
        Status st = client_.ContainerKill(id, at_once ? "KILL" : "TERM");
        if (!st) {
          spdlog::warn("docker stop failed task={} error={}, sending SIGKILL", task,
                       st.error().message);
          (void)client_.ContainerKill(id, "KILL");
        } else if (!at_once) {
          kill_at = Clock::now() + options_.stop_grace;
        }
        give_up =
            (kill_at == Clock::time_point::max() ? Clock::now() : kill_at) + options_.call_timeout;
      }
    } else if (Clock::now() >= kill_at) {
      // The grace is over and it still runs (it ignored SIGTERM).
      kill_at = Clock::time_point::max();
      Status st = client_.ContainerKill(id, "KILL");
      if (!st) {
        spdlog::warn("docker kill failed task={} error={}", task, st.error().message);
      }
      give_up = Clock::now() + options_.call_timeout;
    } else if (Clock::now() >= give_up) {
      wait_error = MakeError("isolation_unavailable",
                             "the Docker daemon did not report the exit of container " +
                                 id.substr(0, 12) + " after it was stopped");
      break;
    }
  }
  if (!status_code) finished_at = Clock::now();
  return exit;
}

RunResult ContainerRun::Outcome(Shared& shared, const Exit& exit, RunResult result) {
  const TaskSpec& spec = spec_;
  const std::string& id = id_;
  const Ending ending = exit.ending;
  const std::optional<int64_t>& status_code = exit.status_code;
  result.exit_code = static_cast<int>(*status_code);
  // OOMKilled is only in inspect. A task that exited 0 succeeded, whatever
  // its children went through, so the success path skips the call.
  std::optional<ContainerState> state;
  if (result.exit_code != 0 || ending != Ending::kNone) {
    auto inspected = client_.ContainerInspectState(id);
    if (inspected) {
      state = *inspected;
      result.exit_code = state->exit_code;
    }
  }

  switch (ending) {
    case Ending::kTimeout:
      SetEnding(result, RunResult::Kind::kTimedOut,
                "stopped after its timeout of " + std::to_string(spec.timeout.count()) + " ms");
      return result;
    case Ending::kStop:
      SetEnding(result, RunResult::Kind::kStopped, "stopped on request");
      return result;
    case Ending::kKill: {
      std::lock_guard lock(shared.state_mu);
      SetEnding(result, RunResult::Kind::kOverLimit,
                "killed by the over-limit policy: " + shared.kill_reason);
      return result;
    }
    case Ending::kNone:
      break;
  }
  if (state && state->oom_killed) {
    SetEnding(result, RunResult::Kind::kOomKilled,
              "killed for exceeding its memory limit of " + Bytes(spec.limits.memory));
    return result;
  }
  if (result.exit_code != 0 && shared.saw_enospc.load()) {
    int64_t limit = spec.limits.disk > 0 ? spec.limits.disk : options_.default_tmpfs_bytes;
    SetEnding(result, RunResult::Kind::kOverLimit, "wrote past its disk limit of " + Bytes(limit));
    return result;
  }
  SetEnding(result, RunResult::Kind::kExited,
            result.exit_code != 0 ? "exited with code " + std::to_string(result.exit_code) : "");
  return result;
}

}  // namespace runner::isolation::docker
