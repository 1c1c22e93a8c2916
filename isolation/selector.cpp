#include "isolation/selector.h"

#include <spdlog/spdlog.h>

#include <stdexcept>

namespace runner::isolation {

IsolationSelector::IsolationSelector(Isolator* docker, Isolator* process,
                                     IsolationMode default_mode)
    : docker_(docker), process_(process), default_mode_(default_mode) {
  if (process_ == nullptr)
    throw std::invalid_argument("IsolationSelector needs a process isolator");
}

bool IsolationSelector::Check() {
  bool up = docker_ != nullptr && docker_->Available();
  {
    std::lock_guard lock(mu_);
    if (!docker_up_.has_value() || *docker_up_ == up) {
      docker_up_ = up;  // the first look is not a transition
      return up;
    }
  }
  // A transition: update and report under the notify lock, so callbacks see
  // the transitions in the order the state took them (always alternating).
  std::lock_guard notify(callbacks_mu_);
  {
    std::lock_guard lock(mu_);
    if (*docker_up_ == up) return up;  // another thread reported it already
    docker_up_ = up;
  }
  spdlog::warn("isolation: docker {}; tasks in auto mode now use {}",
               up ? "is available again" : "became unavailable", up ? "docker" : "process");
  for (const auto& cb : callbacks_) cb(up);
  return up;
}

Result<Isolator*> IsolationSelector::Pick(IsolationMode requested) {
  IsolationMode mode = requested == IsolationMode::kAuto ? default_mode_ : requested;
  if (mode == IsolationMode::kProcess) return process_;
  bool up = Check();
  if (up) return docker_;
  if (mode == IsolationMode::kAuto) return process_;
  if (docker_ == nullptr) {
    return MakeError("isolation_unavailable",
                     "the task needs Docker isolation but this node has no Docker support; "
                     "submit it with isolation=process or auto, or run it on a node with Docker");
  }
  return MakeError("isolation_unavailable",
                   "the task needs Docker isolation but the Docker daemon does not answer; "
                   "start Docker, or submit it with isolation=process or auto");
}

void IsolationSelector::OnChange(std::function<void(bool)> callback) {
  std::lock_guard lock(callbacks_mu_);
  callbacks_.push_back(std::move(callback));
}

bool IsolationSelector::Refresh() { return Check(); }

bool IsolationSelector::docker_available() {
  {
    std::lock_guard lock(mu_);
    if (docker_up_.has_value()) return *docker_up_;
  }
  return Check();
}

std::string IsolationSelector::Mode() {
  if (default_mode_ != IsolationMode::kAuto) return std::string(ToString(default_mode_));
  return docker_available() ? "docker" : "process";
}

}  // namespace runner::isolation
