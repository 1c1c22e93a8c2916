#include "isolation/docker/warm_pool.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <utility>

extern "C" const char runner_warm_launcher_start[];
extern "C" const char runner_warm_launcher_end[];

namespace runner::isolation::docker {

namespace json = boost::json;

namespace {

constexpr const char* kLauncherTarget = "/.runner/launch";

std::string RandomToken() {
  std::random_device rd;
  std::mt19937_64 rng{(static_cast<uint64_t>(rd()) << 32) ^ rd()};
  const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 16; ++i) s += hex[rng() % 16];
  return s;
}

// Writes the embedded launcher to a fresh private directory; its path.
Result<std::pair<std::string, std::string>> WriteLauncher() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "runner-warm.XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return MakeError("internal", std::string("cannot create the warm launcher's directory: ") +
                                     std::strerror(errno));
  }
  std::string path = tmpl + "/runner-warm-launcher";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0555);
  if (fd < 0) {
    return MakeError("internal", "cannot write " + path + ": " + std::strerror(errno));
  }
  const char* p = runner_warm_launcher_start;
  while (p < runner_warm_launcher_end) {
    ssize_t n = ::write(fd, p, static_cast<size_t>(runner_warm_launcher_end - p));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return MakeError("internal", "cannot write " + path + ": " + std::strerror(errno));
    }
    p += n;
  }
  ::close(fd);
  // The directory stays 0700: dockerd (root) bind-mounts the file; nobody
  // else on the host needs to reach it.
  return std::make_pair(tmpl, path);
}

std::vector<std::string> ImageEntrypoint(const json::object& image) {
  std::vector<std::string> out;
  const json::value* config = image.if_contains("Config");
  if (config == nullptr || !config->is_object()) return out;
  const json::value* ep = config->as_object().if_contains("Entrypoint");
  if (ep == nullptr || !ep->is_array()) return out;
  for (const json::value& v : ep->as_array()) {
    if (v.is_string()) out.emplace_back(v.as_string());
  }
  return out;
}

}  // namespace

std::string EncodeLaunch(const TaskSpec& spec, const std::string& report_nonce) {
  std::string body = report_nonce;
  body.push_back('\0');
  body += std::to_string(spec.command.size());
  body.push_back('\0');
  for (const auto& a : spec.command) {
    body += a;
    body.push_back('\0');
  }
  for (const auto& [k, v] : spec.env) {
    body += k;
    body.push_back('=');
    body += v;
    body.push_back('\0');
  }
  const auto n = static_cast<uint32_t>(body.size());
  std::string out;
  out.reserve(body.size() + 4);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += body;
  return out;
}

json::object BuildWarmConfig(const std::string& image, const std::vector<std::string>& entrypoint,
                             const DockerIsolatorOptions& options, const std::string& node_id,
                             const std::string& token, const std::string& launcher_path) {
  TaskSpec spec;  // no limits but the disk: the task's come with `update` when it is taken
  spec.image = image;
  spec.limits.disk = options.warm_disk;
  spec.command = {"-"};
  spec.node_id = node_id;
  json::object config = BuildCreateConfig(spec, options, /*storage_opt=*/false);
  json::array ep{kLauncherTarget};
  for (const auto& e : entrypoint) ep.emplace_back(e);
  config["Entrypoint"] = std::move(ep);
  config["Cmd"] = json::array{};
  config["OpenStdin"] = true;
  config["StdinOnce"] = true;
  config["AttachStdin"] = false;
  json::object labels;
  labels["io.runner.node"] = node_id;
  labels["io.runner.warm"] = token;
  config["Labels"] = std::move(labels);
  json::object& host = config["HostConfig"].as_object();
  host["Binds"] = json::array{launcher_path + ":" + kLauncherTarget + ":ro"};
  return config;
}

WarmPool::WarmPool(EngineClient& client, const DockerIsolatorOptions& isolator_options,
                   WarmPoolOptions options)
    : client_(client),
      iso_(isolator_options),
      options_(std::move(options)),
      token_(RandomToken()) {}

WarmPool::~WarmPool() {
  Stop();
  if (!launcher_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(launcher_dir_, ec);
  }
}

Status WarmPool::Start() {
  if (options_.per_image <= 0 || options_.images.empty()) return {};
  if (launcher_path_.empty()) {
    auto written = WriteLauncher();
    if (!written) return written.error();
    launcher_dir_ = written->first;
    launcher_path_ = written->second;
  }
  if (!threads_.empty()) return {};
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  for (int lane = 0; lane < std::max(1, options_.refill_lanes); ++lane) {
    threads_.emplace_back([this, lane](std::stop_token st) { Loop(st, lane); });
  }
  spdlog::info("docker warm pool started per_image={} images={} token={}", options_.per_image,
               options_.images.size(), token_);
  return {};
}

void WarmPool::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.request_stop();
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  {
    std::lock_guard lock(mu_);
    DropReadyLocked();
  }
  RemoveDropped();
}

std::optional<std::string> WarmPool::Take(const TaskSpec& spec, bool tmpfs_disk) {
  std::unique_lock lock(mu_);
  if (options_.per_image <= 0) return std::nullopt;
  const bool warmed = tmpfs_disk && std::find(options_.images.begin(), options_.images.end(),
                                              spec.image) != options_.images.end();
  if (!warmed) {  // (no map entry for an image nobody warms: task images are untrusted)
    ++misses_;
    return std::nullopt;
  }
  auto& ready = ready_[spec.image];
  if (ready.empty()) {
    // Tasks come faster than containers: replacements start at Take from now
    // on (the loop is told at once).
    last_miss_ = std::chrono::steady_clock::now();
    cv_.notify_all();
    // A waiting taker has a start of its own begun on a free lane (the
    // loops count waiting_) and takes whichever container is ready first:
    // one started earlier for the pool is nearer than a cold create and
    // start, which would compete with it for the daemon.
    if (options_.in_flight_wait.count() > 0 && !failed_ && !stopping_ && !paused_ &&
        waiting_[spec.image] < std::max(1, options_.refill_lanes)) {
      ++waiting_[spec.image];
      cv_.notify_all();
      const uint64_t failures = start_failures_;
      cv_.wait_for(lock, options_.in_flight_wait, [&] {
        return !ready.empty() || start_failures_ != failures || failed_ || stopping_ || paused_;
      });
      --waiting_[spec.image];
    }
  }
  if (ready.empty()) {
    ++misses_;
    return std::nullopt;
  }
  std::string id = std::move(ready.front());
  ready.pop_front();
  ++hits_;
  auto& in_use = in_use_[spec.image];
  if (in_use.size() < 100000) in_use[id] = std::chrono::steady_clock::now();  // bounded
  lock.unlock();
  cv_.notify_all();  // the loop times the refill
  return id;
}

void WarmPool::Release(const std::string& image, const std::string& id) {
  {
    std::lock_guard lock(mu_);
    auto it = in_use_.find(image);
    if (it == in_use_.end()) return;
    it->second.erase(id);
  }
  cv_.notify_all();  // refill in the background
}

int WarmPool::DeferredLocked(const std::string& image,
                             std::chrono::steady_clock::time_point now) const {
  if (now - last_miss_ < options_.burst_memory) return 0;  // busy: no deferral
  auto it = in_use_.find(image);
  if (it == in_use_.end()) return 0;
  int n = 0;
  for (const auto& [id, taken] : it->second) n += now - taken < options_.refill_after ? 1 : 0;
  return n;
}

void WarmPool::CountFallback() {
  std::lock_guard lock(mu_);
  if (hits_ > 0) --hits_;
  ++misses_;
}

void WarmPool::Pause(bool paused) {
  {
    std::lock_guard lock(mu_);
    paused_ = paused;
  }
  cv_.notify_all();
}

void WarmPool::DaemonFailed() {
  {
    std::lock_guard lock(mu_);
    failed_ = true;
    DropReadyLocked();
  }
  cv_.notify_all();
}

WarmStats WarmPool::Stats() const {
  std::lock_guard lock(mu_);
  WarmStats s;
  s.target = options_.per_image * static_cast<int>(options_.images.size());
  for (const auto& [image, ids] : ready_) s.ready += static_cast<int>(ids.size());
  s.hits = hits_;
  s.misses = misses_;
  return s;
}

bool WarmPool::Owns(const std::map<std::string, std::string>& labels) const {
  auto it = labels.find("io.runner.warm");
  return it != labels.end() && it->second == token_;
}

void WarmPool::DropReadyLocked() {
  for (auto& [image, ids] : ready_) {
    for (auto& id : ids) dropped_.push_back(std::move(id));
    ids.clear();
  }
}

void WarmPool::RemoveDropped() {
  std::vector<std::string> ids;
  {
    std::lock_guard lock(mu_);
    ids.swap(dropped_);
  }
  for (std::size_t i = 0; i < ids.size(); ++i) {
    Status st = client_.ContainerRemove(ids[i], /*force=*/true);
    if (!st && st.error().code == "isolation_unavailable") {
      // Later, when the daemon answers (or the orphan reaper at the next start).
      std::lock_guard lock(mu_);
      dropped_.insert(dropped_.end(), ids.begin() + static_cast<std::ptrdiff_t>(i), ids.end());
      return;
    }
  }
}

Result<std::string> WarmPool::StartOne(const std::string& image) {
  std::vector<std::string> entrypoint;
  bool known = false;
  {
    std::lock_guard lock(mu_);
    if (auto it = entrypoints_.find(image); it != entrypoints_.end()) {
      entrypoint = it->second;
      known = true;
    }
  }
  if (!known) {
    auto inspected = client_.ImageInspect(image);
    if (!inspected) return inspected.error();
    entrypoint = ImageEntrypoint(*inspected);
    std::lock_guard lock(mu_);
    entrypoints_[image] = entrypoint;
  }
  auto created = client_.ContainerCreate(
      BuildWarmConfig(image, entrypoint, iso_, options_.node_id, token_, launcher_path_),
      "runner-warm-" + token_.substr(0, 8) + "-" + RandomToken().substr(0, 8));
  if (!created) return created.error();
  if (Status st = client_.ContainerStart(*created); !st) {
    if (!client_.ContainerRemove(*created, true)) {
      std::lock_guard lock(mu_);
      dropped_.push_back(*created);  // once the daemon answers
    }
    return st.error();
  }
  return *created;
}

void WarmPool::CheckAlive() {
  auto list = client_.ContainerList({"io.runner.warm=" + token_});
  if (!list) {
    if (list.error().code == "isolation_unavailable") DaemonFailed();
    return;
  }
  std::set<std::string> running;
  for (const auto& c : *list) {
    if (c.state == "running" && Owns(c.labels)) running.insert(c.id);
  }
  std::lock_guard lock(mu_);
  for (auto& [image, ids] : ready_) {
    for (auto it = ids.begin(); it != ids.end();) {
      if (running.contains(*it)) {
        ++it;
        continue;
      }
      spdlog::warn("docker warm container gone, dropped container={}", it->substr(0, 12));
      dropped_.push_back(std::move(*it));
      it = ids.erase(it);
    }
  }
}

void WarmPool::Loop(std::stop_token stop, int lane) {
  // Lane 0 keeps the pool (removals, checks, pings); every lane starts containers.
  const bool keeper = lane == 0;
  auto next_check = std::chrono::steady_clock::now() + options_.check_every;
  std::chrono::milliseconds backoff = options_.retry;
  while (!stop.stop_requested()) {
    bool failed;
    {
      std::lock_guard lock(mu_);
      failed = failed_;
    }
    if (failed) {
      if (!keeper || !client_.Ping()) {
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, stop, options_.retry, [] { return false; });
        continue;
      }
      std::lock_guard lock(mu_);
      failed_ = false;
      spdlog::info("docker answers again: the warm pool is rebuilt");
    }
    if (keeper) RemoveDropped();
    if (std::chrono::steady_clock::now() >= next_check) {
      if (keeper) CheckAlive();
      next_check = std::chrono::steady_clock::now() + options_.check_every;
      continue;
    }
    // One container at a time per lane, for the image that lacks the most.
    std::string image;
    {
      std::unique_lock lock(mu_);
      // Containers an image lacks: its share of the pool and one per
      // waiting taker, less those ready, being started or deferred.
      auto lacking = [&](const std::string& img, std::chrono::steady_clock::time_point now) {
        return options_.per_image + waiting_[img] -
               (static_cast<int>(ready_[img].size()) + starting_[img] + DeferredLocked(img, now));
      };
      // needed() also sets `until`: the next check, or the next moment a
      // deferred replacement becomes due.
      auto until = next_check;
      auto needed = [&] {
        if (paused_ || failed_) return false;
        const auto now = std::chrono::steady_clock::now();
        until = next_check;
        bool any = false;
        for (const auto& img : options_.images) {
          if (lacking(img, now) > 0) any = true;
          for (const auto& [id, taken] : in_use_[img]) {
            if (now - taken < options_.refill_after) {
              until = std::min(until, taken + options_.refill_after);
            }
          }
        }
        return any;
      };
      auto removals = [&] { return keeper && !dropped_.empty(); };
      bool due = false;
      while (!stop.stop_requested()) {
        if (needed() || removals()) {
          due = true;
          break;
        }
        if (std::chrono::steady_clock::now() >= next_check) break;
        // (A predicate that is always false would sleep through notifications.)
        const auto wake = until;
        cv_.wait_until(lock, stop, wake, [&] { return needed() || removals(); });
      }
      if (!due || !needed()) continue;  // time to check, stopping, or only removals to do
      const auto now = std::chrono::steady_clock::now();
      int most = 0;
      for (const auto& img : options_.images) {
        const int lack = lacking(img, now);
        if (lack > most) {
          most = lack;
          image = img;
        }
      }
      ++starting_[image];  // under the same lock as the choice: lanes never double-count
    }
    auto started = StartOne(image);
    if (!started) {
      {
        std::lock_guard lock(mu_);
        --starting_[image];
        ++start_failures_;
      }
      cv_.notify_all();  // a taker waiting for it goes cold
      spdlog::warn("docker warm container not started image={} error={}", image,
                   started.error().message);
      if (started.error().code == "isolation_unavailable") {
        DaemonFailed();
      } else {
        // A daemon that refuses (a missing image, a launcher path it cannot
        // see): back off up to a minute rather than hammer it.
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, stop, backoff, [] { return false; });
        backoff = std::min(backoff * 2, std::chrono::milliseconds(60000));
      }
      continue;
    }
    backoff = options_.retry;
    {
      std::lock_guard lock(mu_);
      --starting_[image];
      if (stop.stop_requested() || failed_) {
        dropped_.push_back(*started);
      } else {
        ready_[image].push_back(*started);
      }
    }
    cv_.notify_all();  // a taker waiting for it
  }
}

}  // namespace runner::isolation::docker
