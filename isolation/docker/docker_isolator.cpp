#include "isolation/docker/docker_isolator.h"

#include <spdlog/spdlog.h>
#include <sys/random.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cmath>
#include <exception>
#include <random>
#include <thread>
#include <utility>

#include "isolation/docker/container_run.h"
#include "isolation/docker/warm_pool.h"

namespace runner::isolation::docker {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string RandomHex(int n) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < n; ++i) s += hex[rng() % 16];
  return s;
}

// 32 hex digits from the kernel's CSPRNG: the warm launcher's report nonce.
std::string ReportNonce() {
  unsigned char bytes[16] = {};
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = ::getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
    if (n < 0 && errno != EINTR) break;  // (no getrandom: the task could not forge one anyway)
  }
  std::string s;
  for (unsigned char b : bytes) {
    s += "0123456789abcdef"[b >> 4];
    s += "0123456789abcdef"[b & 15];
  }
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

// Where a task's time goes (debug log): each phase's end in ms since Run()
// began, e.g. "docker task phases task=t1 warm_taken=0.0 wait_registered=0.4
// stdin_written=0.6 exit=48.6 output_end=48.7 result=48.8". Marks are taken
// only when debug logging is on.
class PhaseTrace {
 public:
  explicit PhaseTrace(const std::string& task)
      : task_(task), on_(spdlog::should_log(spdlog::level::debug)), t0_(Clock::now()) {}
  ~PhaseTrace() {
    if (!on_) return;
    std::string line;
    for (const auto& [what, at] : marks_) {
      line += fmt::format(" {}={:.1f}", what,
                          std::chrono::duration<double, std::milli>(at - t0_).count());
    }
    spdlog::debug("docker task phases task={}{}", task_, line);
  }
  PhaseTrace(const PhaseTrace&) = delete;
  PhaseTrace& operator=(const PhaseTrace&) = delete;
  void Mark(const char* what, Clock::time_point at) {
    if (on_) marks_.emplace_back(what, at);
  }

 private:
  const std::string& task_;
  bool on_;
  Clock::time_point t0_;
  std::vector<std::pair<const char*, Clock::time_point>> marks_;
};
// The trace of the Run() on this thread (RunWarm marks its phases too).
thread_local PhaseTrace* t_trace = nullptr;
void Mark(const char* what, Clock::time_point at = Clock::now()) {
  if (t_trace != nullptr) t_trace->Mark(what, at);
}

// The task's CPU, memory (swap = memory: no swap) and pids limits as Docker
// resources: in a cold container's HostConfig, or a warm one's update.
void AddLimits(const Limits& limits, json::object& resources) {
  if (limits.cpus > 0) {
    resources["NanoCpus"] = static_cast<int64_t>(std::llround(limits.cpus * 1e9));
  }
  if (limits.memory > 0) {
    resources["Memory"] = limits.memory;
    resources["MemorySwap"] = limits.memory;  // equal = no swap (0 would mean 2x Memory)
  }
  if (limits.pids > 0) resources["PidsLimit"] = limits.pids;
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
  AddLimits(spec.limits, host);
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
                              std::min(options_.call_timeout, std::chrono::milliseconds(10000))}) {
  if (options_.warm_per_image > 0 && !options_.warm_images.empty()) {
    WarmPoolOptions wo;
    wo.per_image = options_.warm_per_image;
    wo.images = options_.warm_images;
    wo.node_id = options_.node_id;
    wo.in_flight_wait = options_.warm_wait;
    wo.refill_lanes = options_.warm_lanes;
    warm_ = std::make_unique<WarmPool>(client_, options_, std::move(wo));
  }
}

DockerIsolator::~DockerIsolator() {
  StopWarmPool();
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
      if (it == c.labels.end() || it->second != node ||
          (!c.labels.contains("io.runner.task") && !c.labels.contains("io.runner.warm"))) {
        continue;
      }
      // Our own warm containers are the pool's (a node reaps its own id on its first pass).
      if (warm_ && warm_->Owns(c.labels)) continue;
      Status st = client_.ContainerRemove(c.id, true);
      if (!st) return st.error();
      spdlog::info("docker reaped orphan container={} node={} task={}", c.id.substr(0, 12), node,
                   c.labels.contains("io.runner.task") ? c.labels.at("io.runner.task") : "(warm)");
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

Status DockerIsolator::StartWarmPool() {
  if (!warm_) return {};
  return warm_->Start();
}

void DockerIsolator::StopWarmPool() {
  if (warm_) warm_->Stop();
}

void DockerIsolator::PauseWarmPool(bool paused) {
  if (warm_) warm_->Pause(paused);
}

void DockerIsolator::DropWarmPool() {
  if (warm_) warm_->DaemonFailed();
}

std::optional<WarmStats> DockerIsolator::WarmStatus() const {
  if (!warm_) return std::nullopt;
  return warm_->Stats();
}

void DockerIsolator::ReportStart(bool warm, Clock::time_point t0) {
  if (start_observer_) {
    start_observer_(warm, std::chrono::duration<double>(Clock::now() - t0).count());
  }
}

std::optional<RunResult> DockerIsolator::RunWarm(const TaskSpec& spec, const std::string& id,
                                                 Observer& observer, std::stop_token stop,
                                                 Clock::time_point t0) {
  ContainerRun run(client_, options_, spec, id, /*storage_opt=*/false);
  auto fallback = [&](const Error& e) -> std::optional<RunResult> {
    spdlog::warn("docker warm container unusable, the task runs cold task={} container={} error={}",
                 spec.task_id, id.substr(0, 12), e.message);
    warm_->CountFallback();
    if (e.code == "isolation_unavailable") warm_->DaemonFailed();
    return std::nullopt;
  };
  if (Status waiting = run.RegisterWait(); !waiting) return fallback(waiting.error());
  Mark("wait_registered");
  // The task's limits, as a cold task's; the warm container has none until now.
  json::object resources;
  AddLimits(spec.limits, resources);
  // The launcher stays, as the task's parent: one process more than a cold
  // container has, so the task gets as many as it would there.
  if (spec.limits.pids > 0) resources["PidsLimit"] = spec.limits.pids + 1;
  if (!resources.empty()) {
    if (Status st = client_.ContainerUpdate(id, resources); !st) return fallback(st.error());
    Mark("updated");
  }
  // Its output comes on the attach stream that carries its argv and env.
  const std::string report_nonce = ReportNonce();  // the task never sees it
  auto attached = client_.ContainerAttach(id, EncodeLaunch(spec, report_nonce));
  if (!attached) {
    // The daemon's refusal (a container that died with a daemon restart:
    // 409) comes before anything is written: the cold path can still run
    // the task. A connection lost while writing may have started it: no
    // second start then.
    if (attached.error().code != "isolation_unavailable") return fallback(attached.error());
    ForgetAvailability(attached.error());
    warm_->DaemonFailed();
    return DockerErrorResult(attached.error());
  }
  run.UseAttachedOutput(std::move(*attached), report_nonce);
  Mark("stdin_written");
  ReportStart(true, t0);
  RunResult r = run.Follow(observer, stop);
  Mark("exit", run.exit_seen_at);
  Mark("output_end", run.logs_ended_at);
  Mark("result");
  return r;
}

RunResult DockerIsolator::Run(const TaskSpec& spec, Observer& observer, std::stop_token stop) {
  const auto t0 = Clock::now();
  PhaseTrace trace(spec.task_id);
  PhaseTrace* const outer_trace = t_trace;
  t_trace = &trace;
  struct Restore {
    PhaseTrace* prev;
    ~Restore() { t_trace = prev; }
  } restore{outer_trace};
  const std::string& task = spec.task_id;
  if (spec.command.empty()) {
    return DockerErrorResult(MakeError("internal", "task " + task + " has an empty command"));
  }
  if (Status image = CheckImage(spec.image); !image) return DockerErrorResult(image.error());
  if (stop.stop_requested()) {
    RunResult r = DockerErrorResult(MakeError("cancelled", "stopped before it started"));
    r.kind = RunResult::Kind::kStopped;
    return r;
  }

  bool storage_opt = spec.limits.disk > 0 && StorageOptSupported();
  if (warm_) {
    // A warm container has tmpfs /work and /tmp of warm_disk, as a cold task
    // with that disk limit (and no StorageOpt) would.
    auto tmpfs_size = [&](int64_t disk) { return disk > 0 ? disk : options_.default_tmpfs_bytes; };
    const bool tmpfs_disk =
        !storage_opt && tmpfs_size(spec.limits.disk) == tmpfs_size(options_.warm_disk);
    auto taken = warm_->Take(spec, tmpfs_disk);
    Mark(taken ? "warm_taken" : "warm_miss");
    if (auto id = taken) {
      std::optional<RunResult> r;
      {
        ContainerOwner owner(removals_, removal_state_, client_, *id, task);  // single use
        r = RunWarm(spec, owner.id(), observer, stop, t0);
      }
      Mark("removal_queued");
      warm_->Release(spec.image, *id);  // its replacement may start now
      if (r) return *r;
    }
  }
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
    return DockerErrorResult(created.error());
  }
  Mark("created");
  ContainerOwner owner(removals_, removal_state_, client_, *created, task);
  RetryFailedRemovals();  // the daemon answers again
  const std::string& id = owner.id();

  ContainerRun run(client_, options_, spec, id, storage_opt);
  if (Status waiting = run.RegisterWait(); !waiting) {
    ForgetAvailability(waiting.error());
    return DockerErrorResult(waiting.error());
  }
  Mark("wait_registered");
  if (Status st = client_.ContainerStart(id); !st) {
    ForgetAvailability(st.error());
    return DockerErrorResult(st.error());
  }
  Mark("started");
  ReportStart(false, t0);
  RunResult r = run.Follow(observer, stop);
  Mark("exit", run.exit_seen_at);
  Mark("output_end", run.logs_ended_at);
  Mark("result");
  return r;
}

}  // namespace runner::isolation::docker
