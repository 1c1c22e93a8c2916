#pragma once

// Builds a Config from its sources with the precedence flags > RUNNER_*
// environment > YAML file (--config) > defaults. Each setting has a
// flag name (the README's `runner serve` table), an environment name
// (RUNNER_ + the flag upper-cased with '-' as '_', e.g. RUNNER_MAX_WORKERS) and
// a YAML key; the YAML keys follow seed 002's example where one fits:
//
//   listen: 127.0.0.1:8080          database: {url: postgresql://...}
//   dataDir: ./var                  docker: {host: unix:///..., taskImage: runner-task:latest}
//   api: {token: secret}            tasks: {defaultTimeoutSeconds: 3600, allowNetwork: false}
//   workers:
//     count: 4                      max: 256
//     mode: process                 # auto | docker | process
//     pollIntervalMs: 1000          idleBackoffMaxMs: 30000
//     leaseSeconds: 30              drainTimeoutSeconds: 60
//     queues: [default]
//     limits: {cpuPercent: 25, memoryMb: 512, diskMb: 1024, pids: 256}
//     resources: {overLimitAction: warn}   # warn | throttle | kill
//   pressure: {cpuHigh: 90, cpuLow: 80, memoryHigh: 90, memoryLow: 80, diskHigh: 95, diskLow: 90}
//
// Bad values are errors (`validation_failed`) whose message names the setting
// in all three spellings and says what is accepted; callers print it and exit.
//
// Thread-safety: pure function (reads the environment through `env`).

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "runner/config.h"

namespace runner {

struct ConfigSources {
  // Flags given on the command line, by name without dashes ("max-workers").
  std::map<std::string, std::string> flags;
  // Environment lookup; empty function = the process environment.
  std::function<std::optional<std::string>(const std::string&)> env;
  // --config (or RUNNER_CONFIG); unset = no file.
  std::optional<std::string> config_path;
};

Result<Config> LoadConfig(const ConfigSources& sources);

// The flag names LoadConfig understands (for the CLI to declare).
struct ConfigFlag {
  std::string name;  // "max-workers"
  std::string help;
};
const std::vector<ConfigFlag>& ConfigFlags();

}  // namespace runner
