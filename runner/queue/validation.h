#pragma once

// Pure validation of a submission, before anything touches the database. Each
// message names the offending field and says what is allowed, so the API can
// return it verbatim as a 400 `validation_failed`. Checks that need the
// database (unknown dependency ids) live in PostgresStore::Submit.
//
// Thread-safety: pure functions.

#include <optional>

#include "base/result.h"
#include "runner/queue/task.h"

namespace runner::queue {

// Bounds enforced on every submission (documented in docs/api.md).
inline constexpr double kMaxCpus = 1024;
inline constexpr int64_t kMinMemory = 4LL << 20;      // 4 MiB: less cannot start a process
inline constexpr int64_t kMaxMemory = 1LL << 40;      // 1 TiB
inline constexpr int64_t kMinDisk = 1LL << 20;        // 1 MiB
inline constexpr int64_t kMaxDisk = 16LL << 40;       // 16 TiB
inline constexpr int64_t kMaxPids = 4194304;          // the kernel's pid_max ceiling
inline constexpr double kMaxTimeout = 7 * 24 * 3600;  // 7 days
inline constexpr double kMaxDelay = 30 * 24 * 3600;   // 30 days
inline constexpr double kMaxBackoff = 3600;
inline constexpr int kMinPriority = -1000;
inline constexpr int kMaxPriority = 1000;
inline constexpr int kMaxAttempts = 100;
inline constexpr std::size_t kMaxQueueName = 64;
inline constexpr std::size_t kMaxGroupName = 128;
inline constexpr std::size_t kMaxCommandArgs = 4096;
inline constexpr std::size_t kMaxCommandBytes = 128 * 1024;
inline constexpr std::size_t kMaxEnvEntries = 256;
inline constexpr std::size_t kMaxEnvBytes = 128 * 1024;
inline constexpr std::size_t kMaxSecrets = 64;
inline constexpr std::size_t kMaxSecretsBytes = 64 * 1024;  // names and values; sealed per row
inline constexpr std::size_t kMaxLabels = 64;
inline constexpr std::size_t kMaxLabelKey = 63;
inline constexpr std::size_t kMaxLabelValue = 256;
inline constexpr std::size_t kMaxDependencies = 100;
inline constexpr std::size_t kMaxIdempotencyKey = 255;
inline constexpr std::size_t kMaxImage = 255;

// nullopt when `task` is acceptable; else Error{"validation_failed", "<field>: <why>"}.
std::optional<Error> ValidateNewTask(const NewTask& task);

// Queue names: 1..64 of [A-Za-z0-9_.-].
bool IsValidQueueName(std::string_view name);
// A task group: the characters of a queue name, at most kMaxGroupName bytes.
bool IsValidGroupName(std::string_view name);

}  // namespace runner::queue
