#include "runner/node/node_control.h"

namespace runner {

std::string_view ToString(PoolState state) {
  switch (state) {
    case PoolState::kRunning:
      return "running";
    case PoolState::kThrottled:
      return "throttled";
    case PoolState::kDraining:
      return "draining";
    case PoolState::kStopped:
      return "stopped";
  }
  return "stopped";
}

}  // namespace runner
