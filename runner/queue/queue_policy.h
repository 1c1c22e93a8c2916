#pragma once

// Per-queue policies (issue #18): cluster-wide caps, a sliding-window rate
// limit and pause, enforced by the claim (queue_policy_schema.h). The store
// side is QueuePolicyStore, which PostgresStore implements.
//
// Thread-safety: value types; QueuePolicyStore methods may be called
// concurrently.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace runner::queue {

struct RateLimit {
  int count = 0;   // at most this many starts...
  double per = 0;  // ...in any window of this many seconds
};

// PUT replaces the whole policy: an absent field is no limit.
struct QueuePolicy {
  std::optional<int> max_running;
  std::optional<int> max_running_per_group;
  std::optional<RateLimit> rate_limit;
  bool paused = false;
};

// A queue as GET /api/v1/queues returns it.
struct QueueInfo {
  std::string name;
  int64_t queued = 0;
  int64_t running = 0;
  int64_t groups = 0;  // groups with queued or running tasks
  QueuePolicy policy;
  std::optional<std::string> throttled;  // "paused" | "max_running" | "rate_limit"
};

// The field that is wrong, with why; nullopt when the policy is valid.
std::optional<Error> ValidateQueuePolicy(const QueuePolicy& policy);

class QueuePolicyStore {
 public:
  virtual ~QueuePolicyStore() = default;
  // Creates or replaces the policy; emits queue.updated and wakes claimers.
  virtual Result<QueueInfo> SetQueuePolicy(std::string_view queue, const QueuePolicy& policy) = 0;
  // not_found when the queue has no policy and no queued or running task.
  virtual Result<QueueInfo> GetQueue(std::string_view queue) = 0;
  // not_found when there is no policy.
  virtual Status DeleteQueuePolicy(std::string_view queue) = 0;
  // Every queue with a policy or queued or running tasks, by name.
  virtual Result<std::vector<QueueInfo>> ListQueues() = 0;
};

}  // namespace runner::queue
