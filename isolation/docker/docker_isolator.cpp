#include "isolation/docker/docker_isolator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <future>
#include <random>
#include <thread>
#include <utility>

namespace runner::isolation::docker {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kEnospc = "No space left on device";

std::string RandomHex(int n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < n; ++i) s += hex[rng() % 16];
  return s;
}

// Docker container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]*.
std::string SafeName(std::string_view s) {
  std::string out;
  for (char c : s) {
    out += (std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '.' || c == '-')
               ? c
               : '_';
  }
  return out.substr(0, 64);
}

bool IsNumber(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// ",uid=U,gid=G" for a numeric "U[:G]" user; empty otherwise.
std::string TmpfsOwner(std::string_view user) {
  auto colon = user.find(':');
  std::string_view uid = user.substr(0, colon);
  std::string_view gid = colon == std::string_view::npos ? uid : user.substr(colon + 1);
  if (!IsNumber(uid) || !IsNumber(gid)) return {};
  return ",uid=" + std::string(uid) + ",gid=" + std::string(gid);
}

std::string Bytes(int64_t n) { return std::to_string(n) + " bytes"; }

// Hands its container to the removal queue when it goes out of scope, on
// every path out of Run().
class ContainerOwner {
 public:
  ContainerOwner(CleanupQueue<ContainerRemoval>& removals, RemovalState& state,
                 EngineClient& client, std::string id, std::string task_id)
      : removals_(removals), removal_(client, state, std::move(id), std::move(task_id)) {}
  ~ContainerOwner() { removals_.Take(std::move(removal_)); }
  ContainerOwner(const ContainerOwner&) = delete;
  ContainerOwner& operator=(const ContainerOwner&) = delete;
  const std::string& id() const { return removal_.id(); }

 private:
  CleanupQueue<ContainerRemoval>& removals_;
  ContainerRemoval removal_;
};

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

RunResult ErrorResult(const Error& e) {
  RunResult r;
  r.kind = RunResult::Kind::kError;
  r.error_code = e.code;
  r.message = e.message;
  r.isolation = "docker";
  return r;
}

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

}  // namespace

json::object BuildCreateConfig(const TaskSpec& spec, const DockerIsolatorOptions& options,
                               bool storage_opt) {
  json::object config;
  config["Image"] = spec.image;
  json::array cmd;
  for (const auto& a : spec.command) cmd.emplace_back(a);
  config["Cmd"] = std::move(cmd);
  json::array env;
  for (const auto& [k, v] : spec.env) env.emplace_back(k + "=" + v);
  config["Env"] = std::move(env);
  config["WorkingDir"] = "/work";
  if (!options.user.empty()) config["User"] = options.user;
  config["Tty"] = false;
  config["OpenStdin"] = false;
  config["AttachStdout"] = false;
  config["AttachStderr"] = false;
  config["NetworkDisabled"] = !options.allow_network;

  json::object labels;
  labels["io.runner.task"] = spec.task_id;
  labels["io.runner.worker"] = spec.worker_id;
  labels["io.runner.node"] = spec.node_id;
  labels["io.runner.attempt"] = std::to_string(spec.attempt);
  for (const auto& [k, v] : spec.labels) labels["io.runner.label." + k] = v;
  config["Labels"] = std::move(labels);

  json::object host;
  if (spec.limits.cpus > 0) {
    host["NanoCpus"] = static_cast<int64_t>(std::llround(spec.limits.cpus * 1e9));
  }
  if (spec.limits.memory > 0) {
    host["Memory"] = spec.limits.memory;
    host["MemorySwap"] = spec.limits.memory;  // equal = no swap (0 would mean 2x Memory)
  }
  if (spec.limits.pids > 0) host["PidsLimit"] = spec.limits.pids;
  host["NetworkMode"] = options.allow_network ? "default" : "none";
  host["CapDrop"] = json::array{"ALL"};
  host["SecurityOpt"] = json::array{"no-new-privileges"};
  host["Init"] = true;
  host["Privileged"] = false;
  host["AutoRemove"] = false;  // we remove it ourselves after reading its state
  if (storage_opt && spec.limits.disk > 0) {
    // The writable layer itself is capped; the root stays writable so the cap applies.
    host["ReadonlyRootfs"] = false;
    host["StorageOpt"] = json::object{{"size", std::to_string(spec.limits.disk)}};
  } else {
    host["ReadonlyRootfs"] = true;
    int64_t size = spec.limits.disk > 0 ? spec.limits.disk : options.default_tmpfs_bytes;
    std::string opts = "rw,exec,nosuid,nodev,mode=1777,size=" + std::to_string(size);
    // Docker copies the image's /work (root, 0755) onto the tmpfs, so mode
    // alone does not make it writable: give it to the task's user.
    opts += TmpfsOwner(options.user);
    host["Tmpfs"] = json::object{{"/work", opts}, {"/tmp", opts}};
  }
  config["HostConfig"] = std::move(host);
  return config;
}

DockerIsolator::DockerIsolator(DockerIsolatorOptions options)
    : options_(std::move(options)),
      client_(
          EngineClientOptions{options_.docker_host, options_.connect_timeout, options_.call_timeout,
                              std::min(options_.call_timeout, std::chrono::milliseconds(10000))}) {}

DockerIsolator::~DockerIsolator() {
  // Removals that found the daemon away get one more try. If it is still
  // away, the first of them to fail gives up for the rest (draining), and
  // ReapOrphans removes them at the node's next start.
  RetryFailedRemovals();
  removal_state_.draining = true;  // removals_ drains after this body
}

ContainerRemoval::ContainerRemoval(ContainerRemoval&& other) noexcept
    : client_(other.client_),
      state_(other.state_),
      id_(std::move(other.id_)),
      task_id_(std::move(other.task_id_)) {
  other.id_.clear();
}

ContainerRemoval::~ContainerRemoval() {
  if (id_.empty()) return;
  if (state_->give_up) {
    spdlog::warn("docker container left for the orphan reaper task={} container={}", task_id_,
                 id_.substr(0, 12));
    return;
  }
  Status st = client_->ContainerRemove(id_, /*force=*/true);
  if (st) return;
  const bool unreachable = st.error().code == "isolation_unavailable";
  if (unreachable && state_->draining) {
    state_->give_up = true;
  } else if (unreachable) {
    std::lock_guard lock(state_->mu);
    if (state_->retry.size() < kMaxRetries) {
      spdlog::warn(
          "docker container remove failed, retried once the daemon answers task={} "
          "container={} error={}",
          task_id_, id_.substr(0, 12), st.error().message);
      state_->retry.emplace_back(std::move(id_), std::move(task_id_));
      return;
    }
  }
  spdlog::error("docker container remove failed task={} container={} error={}", task_id_,
                id_.substr(0, 12), st.error().message);
}

void DockerIsolator::RetryFailedRemovals() {
  std::vector<std::pair<std::string, std::string>> again;
  {
    std::lock_guard lock(removal_state_.mu);
    again.swap(removal_state_.retry);
  }
  for (auto& [id, task] : again) {
    removals_.Take(ContainerRemoval(client_, removal_state_, std::move(id), std::move(task)));
  }
}

void DockerIsolator::WaitForCleanup() { removals_.Wait(); }

bool DockerIsolator::Available() {
  {
    std::lock_guard lock(mu_);
    if (available_checked_ != Clock::time_point{} &&
        Clock::now() - available_checked_ < options_.available_cache) {
      return available_;
    }
  }
  // A short-deadline client: Available() must stay cheap even when the daemon hangs.
  EngineClient quick(EngineClientOptions{options_.docker_host, options_.connect_timeout,
                                         std::chrono::milliseconds(1500),
                                         std::chrono::milliseconds(1500)});
  bool ok = quick.Ping().ok();
  std::lock_guard lock(mu_);
  available_ = ok;
  available_checked_ = Clock::now();
  return ok;
}

std::string DockerIsolator::EngineVersion() {
  auto v = client_.Version();
  if (!v) return v.error().message;
  auto api = client_.ApiVersion();
  return v->version + " (API " + (api ? *api : v->api_version) + ")";
}

Result<int> DockerIsolator::ReapOrphans(const std::vector<std::string>& node_ids) {
  int removed = 0;
  for (const auto& node : node_ids) {
    if (node.empty()) continue;
    auto list = client_.ContainerList({"io.runner.node=" + node});
    if (!list) return list.error();
    for (const auto& c : *list) {
      // The daemon filtered by label already; check again so a daemon that
      // ignored the filter can never make us remove someone else's container.
      auto it = c.labels.find("io.runner.node");
      if (it == c.labels.end() || it->second != node || !c.labels.contains("io.runner.task")) {
        continue;
      }
      Status st = client_.ContainerRemove(c.id, true);
      if (!st) return st.error();
      spdlog::info("docker reaped orphan container={} node={} task={}", c.id.substr(0, 12), node,
                   c.labels.contains("io.runner.task") ? c.labels.at("io.runner.task") : "");
      ++removed;
    }
  }
  return removed;
}

bool DockerIsolator::StorageOptSupported() {
  {
    std::lock_guard lock(mu_);
    if (storage_opt_) return *storage_opt_;
  }
  bool supported = false;
  auto info = client_.Info();
  if (info) {
    std::string driver;
    if (const json::value* d = info->if_contains("Driver"); d != nullptr && d->is_string()) {
      driver = std::string(d->as_string());
    }
    std::string backing;
    if (const json::value* ds = info->if_contains("DriverStatus");
        ds != nullptr && ds->is_array()) {
      for (const json::value& pair : ds->as_array()) {
        if (pair.is_array() && pair.as_array().size() == 2 && pair.as_array()[0].is_string() &&
            pair.as_array()[0].as_string() == "Backing Filesystem" &&
            pair.as_array()[1].is_string()) {
          backing = std::string(pair.as_array()[1].as_string());
        }
      }
    }
    // overlay2 honours size only on xfs mounted with pquota (create fails
    // otherwise, and we fall back); btrfs, zfs and devicemapper honour it.
    supported = (driver == "overlay2" && backing == "xfs") || driver == "btrfs" ||
                driver == "zfs" || driver == "devicemapper";
    spdlog::info("docker disk limits driver={} backing_fs={} mode={}", driver, backing,
                 supported ? "storage_opt" : "tmpfs");
  } else {
    return false;  // unknown for now: use tmpfs, ask again next time
  }
  std::lock_guard lock(mu_);
  storage_opt_ = supported;
  return supported;
}

Status DockerIsolator::CheckImage(const std::string& image) {
  constexpr auto kTrustFor = std::chrono::seconds(60);
  {
    std::lock_guard lock(mu_);
    auto it = images_seen_.find(image);
    if (it != images_seen_.end() && Clock::now() - it->second < kTrustFor) return {};
  }
  auto inspected = client_.ImageInspect(image);
  if (!inspected) return inspected.error();
  std::lock_guard lock(mu_);
  if (images_seen_.size() > 1000) images_seen_.clear();  // bounded
  images_seen_[image] = Clock::now();
  return {};
}

void DockerIsolator::ForgetAvailability(const Error& e) {
  if (e.code != "isolation_unavailable") return;
  std::lock_guard lock(mu_);
  available_checked_ = {};
}

void DockerIsolator::MarkStorageOptUnsupported() {
  std::lock_guard lock(mu_);
  storage_opt_ = false;
}

RunResult DockerIsolator::Run(const TaskSpec& spec, Observer& observer, std::stop_token stop) {
  const std::string& task = spec.task_id;
  if (spec.command.empty()) {
    return ErrorResult(MakeError("internal", "task " + task + " has an empty command"));
  }
  if (Status image = CheckImage(spec.image); !image) return ErrorResult(image.error());
  if (stop.stop_requested()) {
    RunResult r = ErrorResult(MakeError("cancelled", "stopped before it started"));
    r.kind = RunResult::Kind::kStopped;
    return r;
  }

  bool storage_opt = spec.limits.disk > 0 && StorageOptSupported();
  std::string name =
      "runner-" + SafeName(task) + "-" + std::to_string(spec.attempt) + "-" + RandomHex(6);
  auto created = client_.ContainerCreate(BuildCreateConfig(spec, options_, storage_opt), name);
  if (!created && storage_opt &&
      (created.error().message.find("storage-opt") != std::string::npos ||
       created.error().message.find("StorageOpt") != std::string::npos ||
       created.error().message.find("storage opt") != std::string::npos)) {
    spdlog::warn("docker storage_opt rejected, falling back to tmpfs task={} error={}", task,
                 created.error().message);
    MarkStorageOptUnsupported();
    storage_opt = false;
    created = client_.ContainerCreate(BuildCreateConfig(spec, options_, false), name);
  }
  if (!created) {
    if (created.error().code == "image_not_found") {
      std::lock_guard lock(mu_);
      images_seen_.erase(spec.image);
    }
    ForgetAvailability(created.error());
    return ErrorResult(created.error());
  }
  ContainerOwner owner(removals_, removal_state_, client_, *created, task);
  RetryFailedRemovals();  // the daemon answers again
  const std::string& id = owner.id();

  RunResult result;
  result.isolation = "docker";
  SerialObserver obs(observer);

  auto waiter = client_.ContainerWaitBegin(id);
  if (!waiter) {
    ForgetAvailability(waiter.error());
    return ErrorResult(waiter.error());
  }
  if (Status st = client_.ContainerStart(id); !st) {
    ForgetAvailability(st.error());
    return ErrorResult(st.error());
  }
  const auto started = Clock::now();
  spdlog::debug("docker started task={} worker={} container={}", task, spec.worker_id,
                id.substr(0, 12));
  obs.OnStarted(id);

  // Shared between this thread and the helpers below.
  std::mutex state_mu;
  std::string thread_error;  // guarded by state_mu
  std::string kill_reason;   // guarded by state_mu; set by the over-limit policy
  std::atomic<bool> kill_requested{false};
  std::atomic<bool> saw_enospc{false};
  UsageSample last_sample;     // guarded by state_mu
  int64_t peak_memory = 0;     // guarded by state_mu
  int64_t peak_max_usage = 0;  // guarded by state_mu

  std::promise<void> logs_finished;
  auto logs_done = logs_finished.get_future();
  std::jthread logs_thread([&, finished = std::move(logs_finished)](std::stop_token st) mutable {
    std::string window;  // tail of stderr+stdout to spot ENOSPC across chunk borders
    auto sink = [&](FrameStream s, std::string_view data) {
      if (s == FrameStream::kError) {
        spdlog::warn("docker log stream error task={} message={}", task, data);
        return;
      }
      if (!saw_enospc.load()) {
        window.append(data.substr(data.size() > 256 ? data.size() - 256 : 0));
        if (window.find(kEnospc) != std::string::npos) saw_enospc = true;
        if (window.size() > 256) window.erase(0, window.size() - 64);
      }
      obs.OnOutput(s == FrameStream::kStderr ? OutputStream::kStderr : OutputStream::kStdout, data);
    };
    try {
      Status ls = client_.ContainerLogs(id, LogsOptions{}, sink, st, Clock::time_point::max());
      if (!ls && ls.error().code != "cancelled") {
        spdlog::warn("docker logs ended early task={} error={}", task, ls.error().message);
      }
    } catch (const std::exception& e) {
      std::lock_guard lock(state_mu);
      thread_error = e.what();
    }
    finished.set_value();
  });

  std::condition_variable_any stats_cv;
  std::mutex stats_mu;
  std::jthread stats_thread([&](std::stop_token st) {
    try {
      std::optional<CpuCounters> prev;
      bool warned_cpu = false, warned_mem = false, warned_disk = false;
      double current_cpus = spec.limits.cpus;
      auto over = [&](std::string_view resource, bool& done, const std::string& message) {
        if (done) return;
        done = true;
        OverLimitAction action = options_.over_limit.action;
        spdlog::warn("docker over limit task={} container={} resource={} action={} message={}",
                     task, id.substr(0, 12), resource, ActionName(action), message);
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
          std::lock_guard lock(state_mu);
          if (kill_reason.empty()) kill_reason = message;
          kill_requested = true;
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
          std::lock_guard lock(state_mu);
          last_sample = sample;
          peak_memory = std::max(peak_memory, sample.memory);
          peak_max_usage = std::max(peak_max_usage, stats->memory_max_usage);
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
      std::lock_guard lock(state_mu);
      thread_error = e.what();
    }
  });

  // Wait for the exit, stopping the container on timeout, cancel or kill.
  enum class Ending { kNone, kTimeout, kStop, kKill } ending = Ending::kNone;
  const auto timeout_at =
      spec.timeout.count() > 0 ? started + spec.timeout : Clock::time_point::max();
  std::optional<int64_t> status_code;
  std::optional<Error> wait_error;
  Clock::time_point finished_at;
  Clock::time_point give_up = Clock::time_point::max();
  while (true) {
    auto polled = (*waiter)->Poll(std::chrono::milliseconds(50));
    if (!polled) {
      wait_error = polled.error();
      break;
    }
    if (polled->has_value()) {
      status_code = **polled;
      finished_at = Clock::now();
      break;
    }
    if (ending == Ending::kNone) {
      if (stop.stop_requested()) {
        ending = Ending::kStop;
      } else if (Clock::now() >= timeout_at) {
        ending = Ending::kTimeout;
      } else if (kill_requested.load()) {
        ending = Ending::kKill;
      }
      if (ending != Ending::kNone) {
        Status st = ending == Ending::kKill ? client_.ContainerKill(id, "KILL")
                                            : client_.ContainerStop(id, options_.stop_grace);
        if (!st) {
          spdlog::warn("docker stop failed task={} error={}, sending SIGKILL", task,
                       st.error().message);
          (void)client_.ContainerKill(id, "KILL");
        }
        give_up = Clock::now() + options_.call_timeout;
      }
    } else if (Clock::now() >= give_up) {
      wait_error = MakeError("isolation_unavailable",
                             "the Docker daemon did not report the exit of container " +
                                 id.substr(0, 12) + " after it was stopped");
      break;
    }
  }
  if (!status_code) finished_at = Clock::now();

  // The follow stream ends by itself when the container exits; give it a
  // moment to deliver the last output, then stop it.
  if (status_code) logs_done.wait_for(std::chrono::seconds(5));
  logs_thread.request_stop();
  stats_thread.request_stop();
  logs_thread.join();
  stats_thread.join();

  {
    std::lock_guard lock(state_mu);
    result.usage.cpu_seconds = last_sample.cpu_seconds;
    // max_usage (cgroup v1) catches peaks between samples; it includes page
    // cache, so it can exceed the working set the samples report.
    result.usage.peak_memory = std::max(peak_memory, peak_max_usage);
    result.usage.duration = std::chrono::duration<double>(finished_at - started).count();
    if (!thread_error.empty()) {
      return ErrorResult(MakeError("internal", "task " + task + ": " + thread_error));
    }
  }
  if (wait_error) {
    RunResult r = ErrorResult(*wait_error);
    r.usage = result.usage;
    return r;
  }

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
      result.kind = RunResult::Kind::kTimedOut;
      result.error_code = "timed_out";
      result.message =
          "stopped after its timeout of " + std::to_string(spec.timeout.count()) + " ms";
      return result;
    case Ending::kStop:
      result.kind = RunResult::Kind::kStopped;
      result.error_code = "cancelled";
      result.message = "stopped on request";
      return result;
    case Ending::kKill: {
      std::lock_guard lock(state_mu);
      result.kind = RunResult::Kind::kOverLimit;
      result.error_code = "over_limit";
      result.message = "killed by the over-limit policy: " + kill_reason;
      return result;
    }
    case Ending::kNone:
      break;
  }
  if (state && state->oom_killed) {
    result.kind = RunResult::Kind::kOomKilled;
    result.error_code = "oom_killed";
    result.message = "killed for exceeding its memory limit of " + Bytes(spec.limits.memory);
    return result;
  }
  if (result.exit_code != 0 && saw_enospc.load()) {
    int64_t limit = spec.limits.disk > 0 ? spec.limits.disk : options_.default_tmpfs_bytes;
    result.kind = RunResult::Kind::kOverLimit;
    result.error_code = "over_limit";
    result.message = "wrote past its disk limit of " + Bytes(limit);
    return result;
  }
  result.kind = RunResult::Kind::kExited;
  if (result.exit_code != 0)
    result.message = "exited with code " + std::to_string(result.exit_code);
  return result;
}

}  // namespace runner::isolation::docker
