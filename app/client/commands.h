#pragma once

// The client commands of `runner` (README, Client commands): each talks to the
// server through ApiClient, prints a human table (or the API's JSON with
// --json) on stdout, prints a server error as its message on stderr and
// returns the process exit code (0 ok, 1 error, 2 bad usage; `submit --wait`
// returns the task's exit code).
//
// Thread-safety: called from main's thread only.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "app/client/api_client.h"

namespace runner::app {

struct CommandContext {
  ClientOptions client;
  bool json = false;
};

struct SubmitArgs {
  std::vector<std::string> command;
  std::optional<std::string> image, isolation, queue, group, idempotency_key;
  std::optional<std::string> cpus, memory, disk;  // memory/disk accept 512M, 1G, bytes
  std::optional<int64_t> pids;
  std::optional<double> timeout, delay;
  std::optional<int> priority, max_attempts;
  std::vector<std::string> env, labels;  // KEY=VALUE
  // NAME=VALUE, or NAME alone: the value of the environment variable NAME
  // (kept out of `ps` and the shell history).
  std::vector<std::string> secrets;
  std::vector<std::string> depends_on;
  bool wait = false;
};

struct ScheduleArgs {
  std::string name;
  std::optional<std::string> cron, timezone, overlap, catch_up;
  std::optional<double> every;  // seconds
  bool paused = false;
  SubmitArgs task;  // the task options (wait and idempotency_key unused)
};

int RunSubmit(const CommandContext& ctx, const SubmitArgs& args);
// runner schedules; runner schedule add|rm|pause|resume|trigger.
int RunSchedules(const CommandContext& ctx);
int RunScheduleAdd(const CommandContext& ctx, const ScheduleArgs& args);
// action: rm, pause, resume or trigger.
int RunScheduleAction(const CommandContext& ctx, const std::string& action,
                      const std::string& name);
int RunStatus(const CommandContext& ctx);
int RunList(const CommandContext& ctx, const std::optional<std::string>& state,
            const std::optional<std::string>& queue, int limit);
int RunWorkers(const CommandContext& ctx);
int RunScale(const CommandContext& ctx, int count);
int RunStop(const CommandContext& ctx, bool force, std::optional<double> drain_timeout);
int RunStart(const CommandContext& ctx);
int RunLogs(const CommandContext& ctx, const std::string& id, bool follow,
            const std::string& stream);
int RunCancel(const CommandContext& ctx, const std::string& id);

// Queue policies (queue_commands.cpp).
struct QueueSetArgs {
  std::string name;
  std::optional<int> max_running, max_running_per_group;
  std::optional<std::string> rate;  // COUNT/SECONDS
  bool paused = false;
};
int RunQueues(const CommandContext& ctx);
int RunQueueSet(const CommandContext& ctx, const QueueSetArgs& args);
// pause (true) or resume (false), keeping the rest of the policy.
int RunQueuePause(const CommandContext& ctx, const std::string& name, bool paused);

// "512M", "1G", "1.5Gi", "1048576" -> bytes; nullopt when malformed.
std::optional<int64_t> ParseBytes(const std::string& text);

}  // namespace runner::app
