#pragma once

// The Observer the process-isolation tests share (prebuilt_test,
// sandbox_escape_test): a task's output and its pid (the handle).
//
// Thread-safety: its callbacks may come from any thread (its mutex).

#include <mutex>
#include <string>
#include <string_view>

#include "isolation/isolator.h"

namespace runner::isolation::process {

class Capture : public Observer {
 public:
  void OnStarted(std::string_view, std::string_view handle) override {
    std::lock_guard lock(mu_);
    handle_ = handle;
  }
  void OnOutput(OutputStream stream, std::string_view data) override {
    std::lock_guard lock(mu_);
    (stream == OutputStream::kStdout ? out_ : err_).append(data);
  }
  void OnUsage(const UsageSample&) override {}
  void OnOverLimit(std::string_view, OverLimitAction, std::string_view) override {}
  std::string out() {
    std::lock_guard lock(mu_);
    return out_;
  }
  std::string err() {
    std::lock_guard lock(mu_);
    return err_;
  }
  int pid() {
    std::lock_guard lock(mu_);
    return handle_.empty() ? -1 : std::stoi(handle_);
  }

 private:
  std::mutex mu_;
  std::string out_, err_, handle_;
};

}  // namespace runner::isolation::process
