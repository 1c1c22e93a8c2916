#include "isolation/process/process_isolator.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>

#include "isolation/process/prebuilt_pool.h"
#include "isolation/process/task_run.h"

namespace runner::isolation::process {

ProcessIsolator::ProcessIsolator(ProcessIsolatorOptions options) : options_(std::move(options)) {
  if (options_.work_root.empty()) {
    throw std::invalid_argument("process isolation needs a work root (set the data dir)");
  }
  // The task's HOME and cwd must not depend on the runner's cwd.
  options_.work_root = std::filesystem::absolute(options_.work_root);
  if (options_.use_cgroups) {
    cgroups_ = CgroupHost::Detect(options_.cgroup_parent);
    cgroups_.RemoveStale();
  }
  work_root_ = std::make_unique<WorkRoot>(options_.work_root);
  cgroup_spares_ = std::make_unique<CgroupSpares>();
  sandbox_ = std::make_unique<Sandbox>(options_.sandbox);
  cleaner_ = std::make_unique<Cleaner>();
  // Last: nothing after it throws, so the destructor closes it. -1: each
  // task opens its own.
  devnull_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (options_.prebuilt_sandboxes > 0 && sandbox_->usable() && devnull_ >= 0) {
    // A tmpfs work dir (root, a disk limit) is mounted after the sandbox that
    // would run it was built, and would reach it only if the work root were a
    // shared mount: making it one is a host mount that outlives a crashed
    // runner. Such tasks start cold (shared_work_root_ stays false).
    prebuilt_ =
        std::make_unique<PrebuiltPool>(options_, *sandbox_, devnull_, options_.prebuilt_sandboxes);
    spdlog::info(
        "process isolation: {} pre-built sandboxes{}", options_.prebuilt_sandboxes,
        ::geteuid() != 0 || !options_.use_tmpfs ? "" : " (tasks with a disk limit start cold)");
  }
}

ProcessIsolator::~ProcessIsolator() {
  // Idle pre-built sandboxes go first (their inits killed and reaped).
  prebuilt_.reset();
  if (devnull_ >= 0) ::close(devnull_);
}

void ProcessIsolator::WaitForCleanup() { cleaner_->Wait(); }

size_t ProcessIsolator::PrebuiltReady() const { return prebuilt_ ? prebuilt_->ready() : 0; }
std::vector<int> ProcessIsolator::PrebuiltPids() const {
  return prebuilt_ ? prebuilt_->pids() : std::vector<int>{};
}
uint64_t ProcessIsolator::PrebuiltReplaced() const { return prebuilt_ ? prebuilt_->replaced() : 0; }
void ProcessIsolator::SetPrebuiltSandboxes(size_t count) {
  if (prebuilt_) prebuilt_->Resize(count);
}

RunResult ProcessIsolator::Run(const TaskSpec& spec, Observer& observer, std::stop_token stop) {
  TaskRun run(options_, cgroups_, *cgroup_spares_, *cleaner_, *work_root_, devnull_,
              sandbox_->enabled() ? sandbox_.get() : nullptr, prebuilt_.get(), shared_work_root_,
              spec, observer, std::move(stop));
  return run.Run();
}

}  // namespace runner::isolation::process
