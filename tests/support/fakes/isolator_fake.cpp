#include "tests/support/fakes/isolator_fake.h"

#include <chrono>
#include <stdexcept>

namespace runner::testing {

isolation::RunResult FakeIsolator::Run(const isolation::TaskSpec& spec,
                                       isolation::Observer& observer, std::stop_token stop) {
  {
    std::lock_guard lock(mu_);
    ++runs_[spec.task_id];
  }
  ++started_;
  const int now = ++running_;
  int prev = max_running_.load();
  while (now > prev && !max_running_.compare_exchange_weak(prev, now)) {
  }
  struct Leave {
    std::atomic<int>& n;
    ~Leave() { --n; }
  } leave{running_};

  observer.OnStarted(name_, "fake");
  isolation::RunResult r;
  r.isolation = name_;
  const std::string& what = spec.command.at(0);
  auto wait = [&](std::chrono::milliseconds d, bool until_unblocked) {
    std::unique_lock lock(mu_);
    const bool stopped = !cv_.wait_for(lock, stop, d, [&] {
      return until_unblocked && unblocked_;
    }) && stop.stop_requested();
    return stopped;
  };
  if (what == "throw") throw std::runtime_error("fake isolator exploded");
  // An isolator whose error quotes the task's environment (as a daemon's
  // refusal of a container's config might): "fail-env NAME" or "throw-env NAME".
  if (what == "fail-env" || what == "throw-env") {
    auto it = spec.env.find(spec.command.at(1));
    const std::string quoted = spec.command.at(1) + "=" + (it == spec.env.end() ? "" : it->second);
    if (what == "throw-env") throw std::runtime_error("fake isolator exploded on " + quoted);
    r.kind = isolation::RunResult::Kind::kError;
    r.error_code = "internal";
    r.message = "the daemon refused the config: " + quoted;
    return r;
  }
  if (what == "ok" || what == "print") {
    // Each argument is one chunk of output; one that starts with "env:" prints
    // that variable of the task's environment.
    for (std::size_t i = 1; what == "print" && i < spec.command.size(); ++i) {
      const std::string& arg = spec.command[i];
      if (arg.rfind("env:", 0) == 0) {
        auto it = spec.env.find(arg.substr(4));
        observer.OnOutput(isolation::OutputStream::kStdout,
                          it == spec.env.end() ? std::string("<unset>") : it->second);
      } else {
        observer.OnOutput(isolation::OutputStream::kStdout, arg);
      }
    }
    r.kind = isolation::RunResult::Kind::kExited;
    r.exit_code = 0;
    return r;
  }
  if (what == "exit") {
    r.kind = isolation::RunResult::Kind::kExited;
    r.exit_code = std::stoi(spec.command.at(1));
    return r;
  }
  if (what == "sleep" || what == "block") {
    const bool block = what == "block";
    const auto d = block ? std::chrono::milliseconds(60000)
                         : std::chrono::milliseconds(std::stoi(spec.command.at(1)));
    if (wait(d, block) || stop.stop_requested()) {
      r.kind = isolation::RunResult::Kind::kStopped;
      r.exit_code = 137;
      return r;
    }
    r.kind = isolation::RunResult::Kind::kExited;
    r.exit_code = 0;
    return r;
  }
  r.kind = isolation::RunResult::Kind::kError;
  r.error_code = "internal";
  r.message = "unknown fake command " + what;
  return r;
}

void FakeIsolator::Unblock() {
  std::lock_guard lock(mu_);
  unblocked_ = true;
  cv_.notify_all();
}

std::map<std::string, int> FakeIsolator::RunsByTask() const {
  std::lock_guard lock(mu_);
  return runs_;
}

}  // namespace runner::testing
