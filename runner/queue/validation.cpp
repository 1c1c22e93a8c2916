#include "runner/queue/validation.h"

#include <cmath>
#include <set>
#include <string>

#include "base/ulid.h"

namespace runner::queue {
namespace {

Error Invalid(std::string field, const std::string& why) {
  return Error{"validation_failed", field + ": " + why};
}

bool HasControl(std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return true;
  }
  return false;
}

bool IsEnvKey(std::string_view key) {
  if (key.empty() || key.size() > 256) return false;
  for (std::size_t i = 0; i < key.size(); ++i) {
    char c = key[i];
    bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

bool IsLabelKey(std::string_view key) {
  if (key.empty() || key.size() > kMaxLabelKey) return false;
  for (char c : key) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.' || c == '/';
    if (!ok) return false;
  }
  return true;
}

std::optional<Error> ValidateLimits(const isolation::Limits& l) {
  if (!std::isfinite(l.cpus) || l.cpus < 0) {
    return Invalid("limits.cpus", "must be a number >= 0 (0 = unlimited)");
  }
  if (l.cpus > kMaxCpus) return Invalid("limits.cpus", "must be at most 1024");
  if (l.cpus > 0 && l.cpus < 0.01) return Invalid("limits.cpus", "must be at least 0.01 when set");
  if (l.memory < 0) return Invalid("limits.memory", "must be >= 0 bytes (0 = unlimited)");
  if (l.memory > 0 && l.memory < kMinMemory) {
    return Invalid("limits.memory", "must be at least 4194304 bytes (4 MiB) when set");
  }
  if (l.memory > kMaxMemory) return Invalid("limits.memory", "must be at most 1 TiB");
  if (l.disk < 0) return Invalid("limits.disk", "must be >= 0 bytes (0 = unlimited)");
  if (l.disk > 0 && l.disk < kMinDisk) {
    return Invalid("limits.disk", "must be at least 1048576 bytes (1 MiB) when set");
  }
  if (l.disk > kMaxDisk) return Invalid("limits.disk", "must be at most 16 TiB");
  if (l.pids < 0) return Invalid("limits.pids", "must be >= 0 (0 = unlimited)");
  if (l.pids > kMaxPids) return Invalid("limits.pids", "must be at most 4194304");
  return std::nullopt;
}

std::optional<Error> ValidateSecrets(const NewTask& t) {
  if (t.secrets.size() > kMaxSecrets) return Invalid("secrets", "at most 64 secrets");
  std::size_t bytes = 0;
  for (const auto& [k, v] : t.secrets) {
    // Messages name the secret, never its value.
    if (!IsEnvKey(k)) {
      return Invalid("secrets", "key '" + k.substr(0, 64) +
                                    "' is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 256)");
    }
    if (v.find('\0') != std::string::npos) {
      return Invalid("secrets." + k, "must not contain NUL bytes");
    }
    if (t.env.contains(k)) {
      return Invalid("secrets." + k, "is also in env: give each variable in one of them only");
    }
    bytes += k.size() + v.size();
  }
  if (bytes > kMaxSecretsBytes) return Invalid("secrets", "at most 65536 bytes in total");
  return std::nullopt;
}

}  // namespace

bool IsValidQueueName(std::string_view name) {
  return name.size() <= kMaxQueueName && IsValidGroupName(name);
}

bool IsValidGroupName(std::string_view name) {
  if (name.empty() || name.size() > kMaxGroupName) return false;
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

std::optional<Error> ValidateNewTask(const NewTask& t) {
  if (t.command.empty())
    return Invalid("command", "must not be empty: give the program and its arguments");
  if (t.command.front().empty()) return Invalid("command[0]", "the program name must not be empty");
  if (t.command.size() > kMaxCommandArgs) return Invalid("command", "at most 4096 arguments");
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < t.command.size(); ++i) {
    if (t.command[i].find('\0') != std::string::npos) {
      return Invalid("command[" + std::to_string(i) + "]", "must not contain NUL bytes");
    }
    bytes += t.command[i].size();
  }
  if (bytes > kMaxCommandBytes) return Invalid("command", "at most 131072 bytes in total");

  if (t.image) {
    if (t.image->empty() || t.image->size() > kMaxImage) {
      return Invalid("image", "must be 1..255 characters");
    }
    for (char c : *t.image) {
      if (c == ' ' || static_cast<unsigned char>(c) < 0x21 || c == 0x7f) {
        return Invalid("image", "must not contain spaces or control characters");
      }
    }
  }

  if (t.env.size() > kMaxEnvEntries) return Invalid("env", "at most 256 variables");
  std::size_t env_bytes = 0;
  for (const auto& [k, v] : t.env) {
    if (!IsEnvKey(k)) {
      return Invalid("env", "key '" + k.substr(0, 64) +
                                "' is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 256)");
    }
    if (v.find('\0') != std::string::npos) {
      return Invalid("env." + k, "must not contain NUL bytes");
    }
    env_bytes += k.size() + v.size();
  }
  if (env_bytes > kMaxEnvBytes) return Invalid("env", "at most 131072 bytes in total");

  if (auto e = ValidateSecrets(t)) return e;

  if (auto e = ValidateLimits(t.limits)) return e;

  if (t.timeout) {
    if (!std::isfinite(*t.timeout) || *t.timeout <= 0) {
      return Invalid("timeout", "must be a number of seconds > 0");
    }
    if (*t.timeout > kMaxTimeout)
      return Invalid("timeout", "must be at most 604800 seconds (7 days)");
  }
  if (t.priority < kMinPriority || t.priority > kMaxPriority) {
    return Invalid("priority", "must be between -1000 and 1000");
  }
  if (!IsValidQueueName(t.queue)) {
    return Invalid("queue", "must be 1..64 characters of A-Z a-z 0-9 _ . -");
  }
  if (t.group && !IsValidGroupName(*t.group)) {
    return Invalid("group", "must be 1..128 characters of A-Z a-z 0-9 _ . -");
  }
  if (t.max_attempts < 1 || t.max_attempts > kMaxAttempts) {
    return Invalid("max_attempts", "must be between 1 and 100");
  }
  if (!std::isfinite(t.delay) || t.delay < 0) return Invalid("delay", "must be >= 0 seconds");
  if (t.delay > kMaxDelay) return Invalid("delay", "must be at most 2592000 seconds (30 days)");
  if (t.backoff) {
    if (!std::isfinite(*t.backoff) || *t.backoff < 0 || *t.backoff > kMaxBackoff) {
      return Invalid("backoff", "must be between 0 and 3600 seconds");
    }
  }

  if (t.depends_on.size() > kMaxDependencies) return Invalid("depends_on", "at most 100 task ids");
  std::set<std::string_view> seen;
  for (std::size_t i = 0; i < t.depends_on.size(); ++i) {
    const std::string& id = t.depends_on[i];
    const std::string field = "depends_on[" + std::to_string(i) + "]";
    if (!IsUlid(id)) {
      return Invalid(field, "'" + id.substr(0, 64) + "' is not a task id (a 26-character ULID)");
    }
    if (!seen.insert(id).second) return Invalid(field, "'" + id + "' is listed twice");
  }

  if (t.idempotency_key) {
    if (t.idempotency_key->empty() || t.idempotency_key->size() > kMaxIdempotencyKey) {
      return Invalid("idempotency_key", "must be 1..255 characters");
    }
    if (HasControl(*t.idempotency_key)) {
      return Invalid("idempotency_key", "must not contain control characters");
    }
  }

  if (t.labels.size() > kMaxLabels) return Invalid("labels", "at most 64 labels");
  for (const auto& [k, v] : t.labels) {
    if (!IsLabelKey(k)) {
      return Invalid("labels", "key '" + k.substr(0, 64) +
                                   "' must be 1..63 characters of A-Z a-z 0-9 _ . - /");
    }
    if (v.size() > kMaxLabelValue) return Invalid("labels." + k, "at most 256 characters");
    if (HasControl(v)) return Invalid("labels." + k, "must not contain control characters");
  }
  return std::nullopt;
}

}  // namespace runner::queue
