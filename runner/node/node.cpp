#include "runner/node/node.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <filesystem>
#include <future>
#include <utility>

#include "base/ulid.h"
#include "isolation/docker/warm_pool.h"
#include "runner/secrets/secret_box.h"

namespace runner::node {
namespace {

std::chrono::milliseconds Ms(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// What this node cannot run while Docker is `up` or not, in its default
// `mode` (see IsolationSelector): tasks asking for these wait in the queue.
std::vector<std::string> UnrunnableIsolations(bool up, isolation::IsolationMode mode) {
  if (up) return {};
  if (mode == isolation::IsolationMode::kDocker) return {"docker", "auto"};
  return {"docker"};
}

}  // namespace

Node::Node(const Config& config, std::string conninfo, metrics::Registry& metrics)
    : config_(config),
      conninfo_(std::move(conninfo)),
      metrics_(metrics),
      node_id_(NewUlid()),
      docker_gauge_(metrics.GetGauge("runner_docker_available",
                                     "1 while this node's Docker Engine answers")) {}

Result<std::unique_ptr<Node>> Node::Create(const Config& config, std::string conninfo,
                                           metrics::Registry& metrics) {
  return Create(config, std::move(conninfo), metrics, NodeHooks{});
}

Result<std::unique_ptr<Node>> Node::Create(const Config& config, std::string conninfo,
                                           metrics::Registry& metrics, NodeHooks hooks) {
  if (config.max_workers < 1) {
    return MakeError("validation_failed", "--max-workers must be at least 1");
  }
  if (config.workers < 0 || config.workers > config.max_workers) {
    return MakeError("validation_failed", "--workers must be between 1 and --max-workers (" +
                                              std::to_string(config.max_workers) +
                                              "), or 0 for the CPU count");
  }
  std::unique_ptr<Node> node(new Node(config, std::move(conninfo), metrics));

  int workers = config.workers > 0
                    ? config.workers
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers = std::clamp(workers, 1, config.max_workers);

  const std::filesystem::path key_file =
      config.secret_key_file ? std::filesystem::path(*config.secret_key_file)
                             : std::filesystem::path(config.data_dir) / "secret.key";
  if (key_file.has_parent_path()) {
    std::error_code key_ec;
    std::filesystem::create_directories(key_file.parent_path(), key_ec);
    if (key_ec) {
      return MakeError("internal", "cannot create " + key_file.parent_path().string() +
                                       " for the secret key: " + key_ec.message() +
                                       " (check --secret-key-file and --data-dir)");
    }
  }
  auto key = secrets::SecretKey::LoadOrCreate(key_file);
  if (!key) return key.error();
  spdlog::info("secret key loaded key_id={} file={}", key->id(), key_file.string());

  queue::StoreOptions so;
  so.conninfo = node->conninfo_;
  so.secret_key = std::make_shared<const secrets::SecretKey>(*key);
  // Workers report concurrently (finish, logs); the claimer, heartbeat, cancel
  // watcher, reaper and the API need theirs too. Bounded: connections are a
  // shared resource of the database.
  so.pool_size = std::clamp(workers / 2 + 6, 8, 32);
  so.log_cap = config.log_cap;
  so.default_image = config.task_image;
  so.default_timeout = config.default_timeout;
  so.default_limits = config.default_limits;
  auto store = queue::PostgresStore::Open(so);
  if (!store) {
    return MakeError(store.error().code,
                     "cannot open the queue database: " + store.error().message);
  }
  node->store_ = std::move(*store);
  auto schedules = schedule::ScheduleStore::Open(so);
  if (!schedules) return schedules.error();
  node->schedules_ = std::move(*schedules);
  node->scheduler_ =
      std::make_unique<schedule::Scheduler>(*node->schedules_, SystemClock(), node->metrics_);
  node->schedules_->OnChange([s = node->scheduler_.get()] { s->Poke(); });

  const std::filesystem::path data_dir(config.data_dir);
  std::error_code ec;
  std::filesystem::create_directories(data_dir / "work", ec);
  if (ec) {
    return MakeError("internal", "cannot create the tasks' work root " +
                                     (data_dir / "work").string() + ": " + ec.message() +
                                     " (check --data-dir and its permissions)");
  }
  if (hooks.isolator_override != nullptr) {
    node->override_ = hooks.isolator_override;
  } else {
    isolation::process::ProcessIsolatorOptions po;
    po.work_root = data_dir / "work";
    po.over_limit = config.over_limit;
    po.sandbox.enabled = config.process_sandbox;
    po.sandbox.uid = config.process_uid;
    po.sandbox.gid = config.process_gid;
    po.sandbox.allow_network = config.allow_network;
    po.stop_grace = Ms(config.kill_grace);
    // One ready per worker, plus one being used up as the next is built.
    po.prebuilt_sandboxes =
        config.process_prebuilt && config.process_sandbox ? static_cast<size_t>(workers) + 1 : 0;
    node->process_ = std::make_unique<isolation::process::ProcessIsolator>(po);
    if (config.mode != isolation::IsolationMode::kProcess) {
      isolation::docker::DockerIsolatorOptions dopt;
      dopt.docker_host = config.docker_host;
      dopt.allow_network = config.allow_network;
      dopt.over_limit = config.over_limit;
      // Docker's stop API takes whole seconds.
      dopt.stop_grace = Ms(config.kill_grace);
      // By default one per worker, plus one: a replacement is created and
      // started while the next task runs, and with one per worker a lone
      // worker's next task waited for the very start it was to save
      // (bench/pool: 1.08-1.58x cold at 1 worker, bench/docker 1.24-1.45x).
      dopt.warm_per_image = config.warm_containers < 0 ? workers + 1 : config.warm_containers;
      dopt.warm_images = {config.task_image};
      for (const auto& image : config.warm_images) {
        if (std::find(dopt.warm_images.begin(), dopt.warm_images.end(), image) ==
            dopt.warm_images.end()) {
          dopt.warm_images.push_back(image);
        }
      }
      dopt.warm_disk = config.default_limits.disk;
      dopt.node_id = node->node_id_;
      node->docker_ = std::make_unique<isolation::docker::DockerIsolator>(dopt);
      if (dopt.warm_per_image > 0) {
        auto& hits = metrics.GetCounter("runner_docker_warm_hits_total",
                                        "Docker tasks that took a warm container");
        auto& misses = metrics.GetCounter(
            "runner_docker_warm_misses_total",
            "Docker tasks that found no matching warm container and started cold");
        auto& warm_start = metrics.GetHistogram(
            "runner_docker_task_start_seconds",
            "from the isolator taking a Docker task to its process starting, by path",
            metrics::LatencyBuckets(), {{"path", "warm"}});
        auto& cold_start = metrics.GetHistogram(
            "runner_docker_task_start_seconds",
            "from the isolator taking a Docker task to its process starting, by path",
            metrics::LatencyBuckets(), {{"path", "cold"}});
        node->docker_->SetStartObserver(
            [&hits, &misses, &warm_start, &cold_start](bool warm, double seconds) {
              (warm ? hits : misses).Inc();
              (warm ? warm_start : cold_start).Observe(seconds);
            });
      }
    }
    node->selector_ = std::make_unique<isolation::IsolationSelector>(
        node->docker_.get(), node->process_.get(), config.mode);
    Node* raw = node.get();
    node->selector_->OnChange([raw, mode = config.mode](bool up) {
      raw->docker_gauge_.Set(up ? 1 : 0);
      // Its containers may be gone with it: the pool is rebuilt once it answers.
      if (!up && raw->docker_) raw->docker_->DropWarmPool();
      if (raw->pool_) raw->pool_->SetUnavailableIsolations(UnrunnableIsolations(up, mode));
      // Operators see the fallback in the event stream and the dashboard, not only in logs.
      queue::NewEvent event;
      event.kind = up ? "docker.available" : "docker.unavailable";
      event.data_json = boost::json::serialize(boost::json::object{{"node_id", raw->node_id_}});
      auto emitted = raw->store_->Emit(event);
      if (!emitted.ok()) {
        spdlog::warn("event not recorded node_id={} error={}", raw->node_id_,
                     emitted.error().message);
      }
      if (up) {
        spdlog::info("docker available node_id={}", raw->node_id_);
      } else {
        spdlog::warn(
            "docker unavailable node_id={}: tasks that need docker wait in the queue "
            "until it is back here or another node runs them",
            raw->node_id_);
      }
    });
    if (config.mode == isolation::IsolationMode::kDocker && !node->selector_->docker_available()) {
      spdlog::warn(
          "mode=docker but the Docker Engine at {} does not answer; tasks wait in the queue "
          "until it does",
          config.docker_host);
    }
    node->docker_gauge_.Set(node->selector_->docker_available() ? 1 : 0);
    node->RefreshDockerVersion();
  }

  pool::PoolOptions po;
  po.node_id = node->node_id_;
  po.host = HostName();
  po.pid = static_cast<int64_t>(::getpid());
  po.mode =
      node->selector_ ? node->selector_->Mode() : std::string(isolation::ToString(config.mode));
  po.workers = workers;
  po.max_workers = config.max_workers;
  po.queues = config.queues;
  po.poll_interval = std::max(Ms(config.poll_interval), std::chrono::milliseconds(1));
  po.claim_on_finish = config.claim_on_finish;
  po.idle_backoff_max = std::max(Ms(config.idle_backoff_max), po.poll_interval);
  po.lease = std::max(Ms(config.lease), std::chrono::milliseconds(300));
  po.drain_timeout = Ms(config.drain_timeout);
  // A stopped task may take the kill grace to die: wait for its worker longer.
  po.stop_grace = std::max(po.stop_grace, Ms(config.kill_grace) + std::chrono::seconds(10));
  po.default_image = config.task_image;
  po.default_limits = config.default_limits;
  po.default_timeout = Ms(config.default_timeout);
  // A node silent for longer than two leases is dead (it lost every lease it
  // held): waiting the full node_dead_after (90 s) would leave its containers
  // running next to the retries of its tasks for a minute and more.
  po.reap_policy.node_dead_after = std::min(Ms(config.node_dead_after), po.lease * 2);
  po.reap_policy.finished_retention =
      std::chrono::seconds(static_cast<int64_t>(config.finished_retention));
  po.reap_policy.event_retention =
      std::chrono::seconds(static_cast<int64_t>(config.event_retention));
  if (hooks.tune) hooks.tune(po);

  pool::IsolatorPicker picker;
  if (node->override_ != nullptr) {
    isolation::Isolator* iso = node->override_;
    picker = [iso](isolation::IsolationMode) -> Result<isolation::Isolator*> { return iso; };
  } else {
    isolation::IsolationSelector* sel = node->selector_.get();
    picker = [sel](isolation::IsolationMode mode) { return sel->Pick(mode); };
  }
  node->pool_ = std::make_unique<pool::Pool>(*node->store_, std::move(picker), po, metrics);
  if (node->selector_) {
    node->pool_->SetUnavailableIsolations(
        UnrunnableIsolations(node->selector_->docker_available(), config.mode));
  }
  if (node->docker_) {
    isolation::docker::DockerIsolator* docker = node->docker_.get();
    node->pool_->SetOrphanReaper([docker](const std::vector<std::string>& ids) {
      auto r = docker->ReapOrphans(ids);
      if (!r.ok()) {
        if (r.error().code == "isolation_unavailable") {
          spdlog::debug("orphan reaping skipped: {}", r.error().message);
          return true;  // nothing to learn from a daemon we cannot reach
        }
        spdlog::warn("orphan reaping failed: {}", r.error().message);
        return false;
      }
      if (*r > 0) spdlog::info("removed orphan containers count={}", *r);
      return true;
    });
  }

  std::unique_ptr<pressure::ResourceSource> source = std::move(hooks.resources);
  if (!source) {
    std::vector<std::string> paths{config.data_dir};
    if (node->docker_ && node->selector_->docker_available()) {
      auto info = node->docker_->client().Info();
      if (info.ok()) {
        if (auto* root = info->if_contains("DockerRootDir"); root && root->is_string()) {
          paths.emplace_back(root->as_string().c_str());
        }
      }
    }
    source = std::make_unique<pressure::ProcResourceSource>(std::move(paths));
  }
  pressure::MonitorOptions mo;
  mo.thresholds = config.pressure;
  Node* raw = node.get();
  node->monitor_ = std::make_unique<pressure::Monitor>(
      std::move(source), mo, metrics,
      [raw](bool throttled, const std::string& reason) {
        raw->pool_->SetBackpressure(throttled, reason);
        // A throttled host gets no new warm containers (the ready ones stay).
        if (raw->docker_) raw->docker_->PauseWarmPool(throttled);
      },
      [raw](const ResourceSample& sample) { raw->OnSample(sample); });
  spdlog::info("node created node_id={} workers={} max_workers={} mode={} data_dir={}",
               node->node_id_, workers, config.max_workers, po.mode, config.data_dir);
  return node;
}

Node::~Node() {
  StopOptions force;
  force.force = true;
  force.drain_timeout = std::chrono::seconds(0);
  Shutdown(force);
}

runner::Status Node::Start() {
  std::lock_guard lock(shutdown_mu_);
  if (shut_down_) return MakeError("conflict", "the node was shut down");
  if (started_) return {};
  monitor_->Start();
  {
    std::lock_guard l(listener_mu_);
    listener_ = std::make_unique<queue::NotifyListener>(
        conninfo_,
        [this](std::string_view channel, std::string_view payload) { OnNotify(channel, payload); });
  }
  runner::Status st = pool_->Start();
  if (!st.ok()) {
    std::lock_guard l(listener_mu_);
    listener_.reset();
    monitor_->Stop();
    return st;
  }
  scheduler_->Start();
  StartWarm();
  started_ = true;
  return {};
}

void Node::StartWarm() {
  if (!docker_) return;
  if (runner::Status st = docker_->StartWarmPool(); !st.ok()) {
    spdlog::warn("docker warm containers off node_id={} error={}", node_id_, st.error().message);
  }
}

void Node::StopWarm() {
  if (docker_) docker_->StopWarmPool();
}

void Node::Shutdown(const StopOptions& options) {
  shutting_down_ = true;
  const auto drain = std::chrono::duration_cast<std::chrono::milliseconds>(options.drain_timeout);
  // A forced stop interrupts a graceful one in progress (in Shutdown or on
  // the control thread) before waiting for it.
  if (options.force && pool_) pool_->Stop(true);
  std::lock_guard lock(shutdown_mu_);
  if (shut_down_) return;
  if (scheduler_) scheduler_->Stop();  // a stopping node makes no new tasks
  std::jthread control;
  {
    std::lock_guard l(control_mu_);
    control = std::move(control_);
  }
  if (control.joinable()) control.join();
  if (pool_) pool_->Stop(options.force, drain);
  StopWarm();
  {
    std::lock_guard l(listener_mu_);
    listener_.reset();
  }
  if (monitor_) monitor_->Stop();
  shut_down_ = true;
  spdlog::info("node shut down node_id={}", node_id_);
}

queue::QueueStore& Node::store() { return *store_; }

bool Node::Listening() const {
  std::lock_guard l(listener_mu_);
  return listener_ && listener_->Connected();
}

std::vector<queue::WorkerInfo> Node::LiveWorkers() {
  std::vector<queue::WorkerInfo> out;
  const auto now = queue::Clock::now();
  for (const auto& w : pool_->Workers()) {
    out.push_back(queue::WorkerInfo{w.id, node_id_, w.state, w.task_id, w.started_at, now});
  }
  return out;
}

NodeStatus Node::Status() {
  NodeStatus s;
  s.node_id = node_id_;
  if (selector_) {
    s.mode = selector_->Mode();
    s.docker_available = docker_ != nullptr && selector_->docker_available();
  } else {
    s.mode = std::string(isolation::ToString(config_.mode));
  }
  if (s.docker_available) {
    std::lock_guard l(docker_mu_);
    s.docker_version = docker_version_;
  }
  if (docker_) {
    if (auto w = docker_->WarmStatus()) {
      s.docker_warm.target = w->target;
      s.docker_warm.ready = w->ready;
    }
  }
  s.pool = pool_->GetStatus();
  // docs/api.md's third mode: tasks in containers and as processes at once.
  if (s.pool.running_docker > 0 && s.pool.running_process > 0) s.mode = "mixed";
  s.resources = monitor_->Last();
  s.backpressure = pool_->Backpressure();
  s.backpressure_reason = pool_->BackpressureReason();
  if (process_) {
    const auto& so = process_->sandbox().options();
    s.process_sandbox.enabled = so.enabled;
    s.process_sandbox.user = std::to_string(so.uid) + ":" + std::to_string(so.gid);
    s.process_sandbox.network = !so.enabled || so.allow_network;
  }
  return s;
}

runner::Status Node::Scale(int count) {
  runner::Status st = pool_->Scale(count);
  if (st.ok() && process_ && config_.process_prebuilt) {
    process_->SetPrebuiltSandboxes(static_cast<size_t>(count) + 1);
  }
  return st;
}

void Node::StopPool(const StopOptions& options) {
  const bool force = options.force;
  const auto drain = std::chrono::duration_cast<std::chrono::milliseconds>(options.drain_timeout);
  if (force) {
    {
      std::lock_guard l(control_mu_);
      last_force_stop_seq_ = ++control_seq_;
    }
    // Interrupt a drain in progress without waiting behind it.
    auto interrupt = std::make_shared<std::jthread>([this] {
      pool_->Stop(true);
      StopWarm();
    });
    Control([interrupt] {
      if (interrupt->joinable()) interrupt->join();
    });
    return;
  }
  Control([this, drain] {
    pool_->Stop(false, drain);
    StopWarm();
  });
}

void Node::StartPool() {
  uint64_t seq = 0;
  {
    std::lock_guard l(control_mu_);
    seq = ++control_seq_;
  }
  Control([this, seq] {
    if (shutting_down_) return;
    if (last_force_stop_seq_.load() > seq) {
      spdlog::info("pool start dropped: a later force stop supersedes it node_id={}", node_id_);
      return;
    }
    runner::Status st = pool_->Start();
    if (!st.ok()) {
      spdlog::error("pool start failed node_id={} error={}", node_id_, st.error().message);
      return;
    }
    StartWarm();
  });
}

bool Node::Running() { return pool_->Running(); }

bool Node::AwaitControl(std::chrono::milliseconds timeout) {
  auto done = std::make_shared<std::promise<void>>();
  auto applied = done->get_future();
  Control([done] { done->set_value(); });
  return applied.wait_for(timeout) == std::future_status::ready;
}

void Node::Control(std::function<void()> op) {
  std::lock_guard l(control_mu_);
  std::jthread previous = std::move(control_);
  control_ =
      std::jthread([prev = std::move(previous), op = std::move(op)](std::stop_token) mutable {
        if (prev.joinable()) prev.join();
        op();
      });
}

void Node::OnNotify(std::string_view channel, std::string_view payload) {
  if (channel == queue::kCancelChannel) {
    pool_->WakeCancel();
    return;
  }
  // The payload names the queue of the new tasks; an empty one means "you may
  // have missed some: poll". A node serving some queues ignores the others.
  if (!payload.empty() && !config_.queues.empty() &&
      std::find(config_.queues.begin(), config_.queues.end(), payload) == config_.queues.end()) {
    return;
  }
  pool_->Wake();
}

void Node::OnSample(const ResourceSample& sample) {
  (void)sample;
  if (!selector_ || !docker_) return;
  if (auto w = docker_->WarmStatus()) {
    metrics_.GetGauge("runner_docker_warm_ready", "warm Docker containers ready for a task")
        .Set(w->ready);
    metrics_.GetGauge("runner_docker_warm_target", "warm Docker containers this node keeps ready")
        .Set(w->target);
  }
  const bool up = selector_->Refresh();
  docker_gauge_.Set(up ? 1 : 0);
  bool need_version = false;
  {
    std::lock_guard l(docker_mu_);
    need_version = up && docker_version_.empty();
  }
  if (need_version) RefreshDockerVersion();
}

void Node::RefreshDockerVersion() {
  if (!docker_) return;
  auto v = docker_->client().Version();
  std::lock_guard l(docker_mu_);
  docker_version_ = v.ok() ? v->version : std::string();
}

}  // namespace runner::node
