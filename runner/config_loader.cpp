#include "runner/config_loader.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace runner {
namespace {

using Setter = std::function<std::optional<std::string>(Config&, const std::string&)>;

struct Setting {
  std::string flag;
  std::string yaml;  // dotted path
  std::string help;
  Setter set;  // returns what is wrong, or nullopt
};

std::optional<double> ToDouble(const std::string& s) {
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<int64_t> ToInt(const std::string& s) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

Setter IntIn(int Config::*field, int lo, int hi) {
  return [=](Config& c, const std::string& v) -> std::optional<std::string> {
    auto n = ToInt(v);
    if (!n || *n < lo || *n > hi) {
      return "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
    }
    c.*field = static_cast<int>(*n);
    return std::nullopt;
  };
}

// Seconds (scale 1) or milliseconds (scale 0.001) into a seconds field.
Setter SecondsIn(double Config::*field, double lo, double hi, double scale = 1) {
  return [=](Config& c, const std::string& v) -> std::optional<std::string> {
    auto d = ToDouble(v);
    if (!d || *d * scale < lo || *d * scale > hi) {
      std::ostringstream os;
      os << "must be a number of " << (scale == 1 ? "seconds" : "milliseconds") << " from "
         << lo / scale << " to " << hi / scale;
      return os.str();
    }
    c.*field = *d * scale;
    return std::nullopt;
  };
}

Setter PercentIn(double PressureThresholds::*field) {
  return [=](Config& c, const std::string& v) -> std::optional<std::string> {
    auto d = ToDouble(v);
    if (!d || *d <= 0 || *d > 100) return "must be a percentage from 1 to 100";
    c.pressure.*field = *d;
    return std::nullopt;
  };
}

Setter NonEmpty(std::string Config::*field) {
  return [=](Config& c, const std::string& v) -> std::optional<std::string> {
    if (v.empty()) return "must not be empty";
    c.*field = v;
    return std::nullopt;
  };
}

Setter BytesFromMb(int64_t isolation::Limits::*field) {
  return [=](Config& c, const std::string& v) -> std::optional<std::string> {
    auto n = ToInt(v);
    if (!n || *n < 0 || *n > (int64_t{1} << 30)) return "must be a whole number of MiB, 0 = none";
    c.default_limits.*field = *n * 1024 * 1024;
    return std::nullopt;
  };
}

bool ParseBool(const std::string& v, bool& out) {
  std::string l = v;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (l == "true" || l == "1" || l == "yes" || l == "on") {
    out = true;
    return true;
  }
  if (l == "false" || l == "0" || l == "no" || l == "off") {
    out = false;
    return true;
  }
  return false;
}

const std::vector<Setting>& Settings() {
  static const std::vector<Setting> kSettings = {
      {"listen", "listen", "HOST:PORT of REST, SSE, metrics and the dashboard",
       NonEmpty(&Config::listen)},
      {"database-url", "database.url",
       "PostgreSQL URL of the queue; none: a private cluster under --data-dir",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v.empty()) {
           c.database_url.reset();
         } else {
           c.database_url = v;
         }
         return std::nullopt;
       }},
      {"data-dir", "dataDir", "embedded database and temp work dirs", NonEmpty(&Config::data_dir)},
      {"workers", "workers.count", "initial pool size (0 = CPU count)",
       IntIn(&Config::workers, 0, 100000)},
      {"max-workers", "workers.max", "upper bound for scale",
       IntIn(&Config::max_workers, 1, 100000)},
      {"mode", "workers.mode", "default isolation: auto, docker or process",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         auto m = isolation::ParseIsolationMode(v);
         if (!m) return "must be auto, docker or process";
         c.mode = *m;
         return std::nullopt;
       }},
      {"docker-host", "docker.host", "Docker Engine socket (unix:///var/run/docker.sock)",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v.rfind("unix://", 0) != 0 || v.size() <= 7) {
           return "must be a unix socket URL like unix:///var/run/docker.sock";
         }
         c.docker_host = v;
         return std::nullopt;
       }},
      {"task-image", "docker.taskImage", "image for tasks that name none",
       NonEmpty(&Config::task_image)},
      {"poll-interval", "", "fallback poll in seconds; idle backoff doubles it up to 30",
       SecondsIn(&Config::poll_interval, 0.01, 3600)},
      {"", "workers.pollIntervalMs", "", SecondsIn(&Config::poll_interval, 0.01, 3600, 0.001)},
      {"", "workers.idleBackoffMaxMs", "", SecondsIn(&Config::idle_backoff_max, 0.01, 3600, 0.001)},
      {"lease", "workers.leaseSeconds", "lease length in seconds; renewed every third of it",
       SecondsIn(&Config::lease, 3, 3600)},
      {"drain-timeout", "workers.drainTimeoutSeconds", "graceful stop deadline in seconds",
       SecondsIn(&Config::drain_timeout, 0, 24 * 3600)},
      {"api-token", "api.token", "bearer token; required for a non-loopback --listen",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v.empty()) {
           c.api_token.reset();
         } else {
           c.api_token = v;
         }
         return std::nullopt;
       }},
      {"kill-grace", "workers.killGraceSeconds",
       "seconds between SIGTERM and SIGKILL when a task times out or is cancelled",
       SecondsIn(&Config::kill_grace, 0, 3600)},
      {"api-token-file", "api.tokenFile",
       "file holding the bearer token (not visible in ps, unlike --api-token)",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v.empty()) return std::nullopt;
         std::ifstream in(v);
         if (!in) return "cannot be read: give a readable file holding the token";
         std::stringstream text;
         text << in.rdbuf();
         std::string token = text.str();
         while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
           token.pop_back();
         }
         if (token.empty()) return "is empty: write the token into it";
         c.api_token = token;
         return std::nullopt;
       }},
      {"secret-key-file", "secrets.keyFile",
       "key sealing task secrets (default <data-dir>/secret.key, made 0600 at first start); "
       "every node sharing the database needs the same key",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v.empty()) {
           c.secret_key_file.reset();
         } else {
           c.secret_key_file = v;
         }
         return std::nullopt;
       }},
      {"claim-on-finish", "workers.claimOnFinish",
       "a worker reports its task and claims its next one in one statement",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (!ParseBool(v, c.claim_on_finish)) return "must be true or false";
         return std::nullopt;
       }},
      {"queues", "workers.queues", "comma-separated queues to serve (default: all)",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         c.queues.clear();
         std::stringstream ss(v);
         std::string q;
         while (std::getline(ss, q, ',')) {
           if (!q.empty()) c.queues.push_back(q);
         }
         return std::nullopt;
       }},
      {"", "workers.limits.cpuPercent", "",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         auto d = ToDouble(v);
         if (!d || *d < 0 || *d > 100000) return "must be a percentage of one CPU, 0 = none";
         c.default_limits.cpus = *d / 100.0;
         return std::nullopt;
       }},
      {"", "workers.limits.memoryMb", "", BytesFromMb(&isolation::Limits::memory)},
      {"", "workers.limits.diskMb", "", BytesFromMb(&isolation::Limits::disk)},
      {"", "workers.limits.pids", "",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         auto n = ToInt(v);
         if (!n || *n < 0 || *n > (1 << 22)) return "must be a whole number, 0 = none";
         c.default_limits.pids = *n;
         return std::nullopt;
       }},
      {"over-limit-action", "workers.resources.overLimitAction",
       "what to do when a task goes over a limit: warn, throttle or kill",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v == "warn") {
           c.over_limit.action = isolation::OverLimitAction::kWarn;
         } else if (v == "throttle") {
           c.over_limit.action = isolation::OverLimitAction::kThrottle;
         } else if (v == "kill") {
           c.over_limit.action = isolation::OverLimitAction::kKill;
         } else {
           return "must be warn, throttle or kill";
         }
         return std::nullopt;
       }},
      {"default-timeout", "tasks.defaultTimeoutSeconds",
       "timeout in seconds for tasks that name none (0 = none)",
       SecondsIn(&Config::default_timeout, 0, 366.0 * 24 * 3600)},
      {"process-sandbox", "tasks.processSandbox",
       "on: process tasks run in a sandbox (namespaces, seccomp, unprivileged user); off: bare",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v != "on" && v != "off") return "must be on or off";
         c.process_sandbox = v == "on";
         return std::nullopt;
       }},
      {"process-prebuilt", "tasks.processPrebuilt",
       "on: keep sandboxes built ahead of their task (one per worker, plus one); off (default): "
       "build each at its start",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (v != "on" && v != "off") return "must be on or off";
         c.process_prebuilt = v == "on";
         return std::nullopt;
       }},
      {"process-user", "tasks.processUser", "UID:GID process tasks run as (default 65534:65534)",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         const std::string kHow = "must be UID:GID with numbers other than 0, like 65534:65534";
         auto colon = v.find(':');
         if (colon == std::string::npos) return kHow;
         auto uid = ToInt(v.substr(0, colon));
         auto gid = ToInt(v.substr(colon + 1));
         if (!uid || !gid || *uid <= 0 || *gid <= 0 || *uid > 0xfffffffe || *gid > 0xfffffffe) {
           return kHow;
         }
         c.process_uid = static_cast<uint32_t>(*uid);
         c.process_gid = static_cast<uint32_t>(*gid);
         return std::nullopt;
       }},
      {"warm-containers", "docker.warmContainers",
       "Docker containers kept started ahead per warmed image, each used by one task "
       "(default: one per worker, plus one; 0 = off)",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         auto n = ToInt(v);
         if (!n || *n < 0 || *n > 1000) return "must be a whole number from 0 to 1000";
         c.warm_containers = static_cast<int>(*n);
         return std::nullopt;
       }},
      {"warm-images", "docker.warmImages",
       "comma-separated images to keep warm containers of, besides the task image",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         c.warm_images.clear();
         std::stringstream ss(v);
         std::string image;
         while (std::getline(ss, image, ',')) {
           if (!image.empty()) c.warm_images.push_back(image);
         }
         return std::nullopt;
       }},
      {"allow-network", "tasks.allowNetwork",
       "give tasks a network (Docker: the bridge; process: the host's)",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         if (!ParseBool(v, c.allow_network)) return "must be true or false";
         return std::nullopt;
       }},
      {"log-cap", "tasks.logCapBytes", "log bytes stored per task",
       [](Config& c, const std::string& v) -> std::optional<std::string> {
         auto n = ToInt(v);
         if (!n || *n < 1024 || *n > (int64_t{1} << 34)) return "must be bytes from 1024 to 16 GiB";
         c.log_cap = *n;
         return std::nullopt;
       }},
      {"", "pressure.cpuHigh", "", PercentIn(&PressureThresholds::cpu_high)},
      {"", "pressure.cpuLow", "", PercentIn(&PressureThresholds::cpu_low)},
      {"", "pressure.memoryHigh", "", PercentIn(&PressureThresholds::memory_high)},
      {"", "pressure.memoryLow", "", PercentIn(&PressureThresholds::memory_low)},
      {"", "pressure.diskHigh", "", PercentIn(&PressureThresholds::disk_high)},
      {"", "pressure.diskLow", "", PercentIn(&PressureThresholds::disk_low)},
  };
  return kSettings;
}

std::string EnvName(const std::string& flag) {
  std::string out = "RUNNER_";
  for (char ch : flag) {
    out += ch == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  }
  return out;
}

std::string EnvName(const std::string& flag);

// Names a setting in all its spellings, so the reader can find where it came from.
std::string Spellings(const Setting& s) {
  std::string out;
  if (!s.flag.empty()) out += "--" + s.flag + ", " + EnvName(s.flag);
  if (!s.yaml.empty()) out += (out.empty() ? "YAML key " : ", YAML key ") + s.yaml;
  return out;
}

Error Bad(const std::string& where, const Setting& s, const std::string& value,
          const std::string& what) {
  return MakeError("validation_failed",
                   where + ": '" + value + "' " + what + " (setting " + Spellings(s) + ")");
}

// Flattens YAML scalars (and scalar lists, joined by commas) to dotted keys.
std::optional<Error> Flatten(const YAML::Node& node, const std::string& prefix,
                             std::map<std::string, std::string>& out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      std::string key = kv.first.as<std::string>();
      if (auto e = Flatten(kv.second, prefix.empty() ? key : prefix + "." + key, out)) return e;
    }
  } else if (node.IsSequence()) {
    std::string joined;
    for (const auto& item : node) {
      if (!item.IsScalar()) {
        return MakeError("validation_failed", prefix + ": must be a list of plain values");
      }
      if (!joined.empty()) joined += ",";
      joined += item.as<std::string>();
    }
    out[prefix] = joined;
  } else if (node.IsScalar()) {
    out[prefix] = node.as<std::string>();
  } else if (node.IsNull()) {
    out[prefix] = "";
  }
  return std::nullopt;
}

}  // namespace

const std::vector<ConfigFlag>& ConfigFlags() {
  static const std::vector<ConfigFlag> kFlags = [] {
    std::vector<ConfigFlag> flags;
    for (const auto& s : Settings()) {
      if (!s.flag.empty()) flags.push_back({s.flag, s.help});
    }
    return flags;
  }();
  return kFlags;
}

Result<Config> LoadConfig(const ConfigSources& sources) {
  Config config;
  auto env = sources.env ? sources.env : [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };

  // 1. YAML file.
  std::optional<std::string> path = sources.config_path;
  if (!path) path = env("RUNNER_CONFIG");
  if (path && !path->empty()) {
    std::map<std::string, std::string> values;
    try {
      YAML::Node root = YAML::LoadFile(*path);
      if (!root.IsNull() && !root.IsMap()) {
        return MakeError("validation_failed",
                         "config file " + *path + ": the top level must be a mapping of keys");
      }
      if (auto e = Flatten(root, "", values)) {
        return MakeError(e->code, "config file " + *path + ": " + e->message);
      }
    } catch (const YAML::BadFile&) {
      return MakeError("validation_failed", "config file " + *path +
                                                " cannot be read; check the path given to "
                                                "--config (or RUNNER_CONFIG)");
    } catch (const YAML::Exception& e) {
      return MakeError("validation_failed",
                       "config file " + *path + " is not valid YAML: " + e.what());
    }
    for (const auto& [key, value] : values) {
      auto it = std::find_if(Settings().begin(), Settings().end(),
                             [&](const Setting& s) { return s.yaml == key; });
      if (it == Settings().end()) {
        std::string known;
        for (const auto& s : Settings()) {
          if (!s.yaml.empty()) known += (known.empty() ? "" : ", ") + s.yaml;
        }
        return MakeError("validation_failed", "config file " + *path + ": unknown key '" + key +
                                                  "' (known keys: " + known + ")");
      }
      if (auto what = it->set(config, value)) {
        return Bad("config file " + *path + " key " + key, *it, value, *what);
      }
    }
  }

  // 2. Environment, 3. flags.
  for (const auto& s : Settings()) {
    if (s.flag.empty()) continue;
    if (auto v = env(EnvName(s.flag))) {
      if (auto what = s.set(config, *v)) return Bad(EnvName(s.flag), s, *v, *what);
    }
  }
  for (const auto& [name, value] : sources.flags) {
    auto it = std::find_if(Settings().begin(), Settings().end(),
                           [&](const Setting& s) { return s.flag == name; });
    if (it == Settings().end()) {
      return MakeError("validation_failed", "--" + name + ": unknown setting");
    }
    if (auto what = it->set(config, value)) return Bad("--" + name, *it, value, *what);
  }

  // Cross-field checks.
  if (config.workers > config.max_workers) {
    return MakeError("validation_failed", "--workers (" + std::to_string(config.workers) +
                                              ") is above --max-workers (" +
                                              std::to_string(config.max_workers) +
                                              "); raise --max-workers or lower --workers");
  }
  const auto& p = config.pressure;
  if (p.cpu_low >= p.cpu_high || p.memory_low >= p.memory_high || p.disk_low >= p.disk_high) {
    return MakeError("validation_failed",
                     "pressure thresholds: each *Low must be below its *High (e.g. cpuLow 80, "
                     "cpuHigh 90)");
  }
  return config;
}

}  // namespace runner
