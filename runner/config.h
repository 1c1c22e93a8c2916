#pragma once

// The node's configuration. Precedence: flags > RUNNER_* environment > YAML
// file (--config) > defaults. Loading lives in config_loader.h; bad values stop
// the program at start with a message that says how to fix them.
//
// Thread-safety: immutable after start.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "isolation/isolator.h"

namespace runner {

struct PressureThresholds {
  double cpu_high = 90, cpu_low = 80;        // percent of the host
  double memory_high = 90, memory_low = 80;  // percent used
  double disk_high = 95, disk_low = 90;      // percent used
};

struct Config {
  // serve
  std::string listen = "127.0.0.1:8080";
  std::optional<std::string> database_url;  // none: embedded cluster under data_dir
  std::string data_dir = "./var";
  int workers = 0;  // 0: CPU count
  int max_workers = 256;
  isolation::IsolationMode mode = isolation::IsolationMode::kAuto;
  std::string docker_host = "unix:///var/run/docker.sock";
  std::string task_image = "runner-task:latest";
  // Docker warm containers (isolation/docker/warm_pool.h) kept ready per
  // image: -1 = one per worker plus one, 0 = off. The task image is always warmed;
  // warm_images adds others.
  int warm_containers = -1;
  std::vector<std::string> warm_images;
  double poll_interval = 1;  // seconds; idle backoff doubles it up to idle_backoff_max
  double idle_backoff_max = 30;
  double lease = 30;          // seconds; renewed every third of it
  double drain_timeout = 60;  // seconds
  // At timeout or cancel a task gets SIGTERM, then SIGKILL after this many
  // seconds; the same in both isolations.
  double kill_grace = 5;
  std::optional<std::string> api_token;
  // Seals task secrets at rest; none: <data_dir>/secret.key, created 0600 at
  // first start. Nodes sharing a database need the same key.
  std::optional<std::string> secret_key_file;
  std::vector<std::string> queues;  // empty: all queues
  bool claim_on_finish = true;      // a busy worker claims its next task as it reports

  // task defaults and policy
  double default_timeout = 3600;     // seconds, for tasks that name none
  isolation::Limits default_limits;  // for tasks that name none (0 = unlimited)
  isolation::OverLimitPolicy over_limit;
  bool allow_network = false;   // operator may allow a network (Docker: bridge; process: host)
  bool process_sandbox = true;  // process tasks in namespaces + seccomp as process_uid:gid
  // Keep sandboxes built ahead of their task (one per worker, plus one).
  // Off by default until it has run in CI for a while.
  bool process_prebuilt = false;
  uint32_t process_uid = 65534;
  uint32_t process_gid = 65534;
  int64_t log_cap = 1 << 20;    // bytes stored per task
  double node_dead_after = 90;  // seconds without a node heartbeat
  double finished_retention = 7 * 24 * 3600;
  double event_retention = 24 * 3600;

  PressureThresholds pressure;

  // client commands
  std::string server = "http://127.0.0.1:8080";
};

}  // namespace runner
