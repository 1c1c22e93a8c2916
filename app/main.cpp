// The `runner` binary: wiring only. Parses the command line with
// CLI11 and hands over to app/serve.h (serve, migrate) and
// app/client/commands.h (the client commands).
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "app/client/commands.h"
#include "app/serve.h"
#include "runner/config_loader.h"

namespace {

std::optional<std::string> Env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

// --server/--token/--json on a client command. The environment
// (RUNNER_SERVER, RUNNER_API_TOKEN) is read once in main, not per option:
// every subcommand binds the same variables, and CLI11 applying the
// environment for each of them overwrote a --server given on the command line.
void AddClientOptions(CLI::App* cmd, runner::app::CommandContext& ctx, std::string& token) {
  cmd->add_option("--server", ctx.client.server, "server URL (RUNNER_SERVER)")
      ->capture_default_str();
  cmd->add_option("--token", token, "API token, Authorization: Bearer (RUNNER_API_TOKEN)");
  cmd->add_flag("--json", ctx.json, "print the API's JSON instead of a table");
}

// The task options of submit and schedule add.
void AddTaskOptions(CLI::App* cmd, runner::app::SubmitArgs& args) {
  cmd->add_option("--image", args.image, "Docker image (default: the server's)");
  cmd->add_option("--isolation", args.isolation, "auto, docker or process")
      ->check(CLI::IsMember({"auto", "docker", "process"}));
  cmd->add_option("--cpus", args.cpus, "CPU cores, e.g. 0.5");
  cmd->add_option("--memory", args.memory, "memory limit: bytes or 256M, 1G");
  cmd->add_option("--disk", args.disk, "disk limit: bytes or 100M, 1G");
  cmd->add_option("--pids", args.pids, "process/thread limit");
  cmd->add_option("--group", args.group, "group: claims rotate between a queue's groups");
  cmd->add_option("--timeout", args.timeout, "seconds (0 = none)");
  cmd->add_option("--delay", args.delay, "seconds before it may run");
  cmd->add_option("--priority", args.priority, "higher runs first");
  cmd->add_option("--queue", args.queue, "queue name (default: default)");
  cmd->add_option("--max-attempts", args.max_attempts, "attempts before it fails");
  cmd->add_option("--env,-e", args.env, "KEY=VALUE (repeatable)")->allow_extra_args(false);
  cmd->add_option("--secret,-s", args.secrets,
                  "NAME=VALUE, or NAME to take the value from the environment (repeatable); "
                  "never shown back, masked in output")
      ->allow_extra_args(false);
  cmd->add_option("--label,-l", args.labels, "KEY=VALUE (repeatable)")->allow_extra_args(false);
  cmd->add_option("--depends-on", args.depends_on, "task id (repeatable)")->allow_extra_args(false);
  cmd->add_option("--idempotency-key", args.idempotency_key,
                  "same key -> the same task, never a second one");
}

// The client flags may come before the subcommand too (`runner --server URL
// status`): they are moved to just after it, where the subcommand's own
// options take them, so both spellings mean the same. A nested subcommand
// (`queue set`, `schedule add`) takes them after its last word: `queue`
// itself has no --server.
std::vector<std::string> ClientFlagsAfterSubcommand(const CLI::App& app, int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  std::vector<std::string> moved;
  std::size_t i = 1;
  while (i < args.size()) {
    const std::string& a = args[i];
    if ((a == "--server" || a == "--token") && i + 1 < args.size()) {
      moved.push_back(a);
      moved.push_back(args[i + 1]);
      i += 2;
    } else if (a == "--json" || a.rfind("--server=", 0) == 0 || a.rfind("--token=", 0) == 0) {
      moved.push_back(a);
      i += 1;
    } else {
      break;
    }
  }
  if (moved.empty() || i >= args.size()) return args;
  std::size_t end = i;  // one past the subcommand's last word
  const CLI::App* at = &app;
  while (end < args.size()) {
    auto next = at->get_subcommands([&](const CLI::App* s) { return s->get_name() == args[end]; });
    if (next.empty()) break;
    at = next.front();
    ++end;
  }
  if (end == i) end = i + 1;  // not a subcommand: CLI11 will say so
  std::vector<std::string> out{args[0]};
  out.insert(out.end(), args.begin() + static_cast<std::ptrdiff_t>(i),
             args.begin() + static_cast<std::ptrdiff_t>(end));
  out.insert(out.end(), moved.begin(), moved.end());
  out.insert(out.end(), args.begin() + static_cast<std::ptrdiff_t>(end), args.end());
  return out;
}

// Every subcommand, its arguments and where CLI11 parses them to.
struct Cli {
  CLI::App app{"runner: a job runner appliance (REST API, CLI, dashboard)", "runner"};
  runner::app::CommandContext ctx;
  std::string token;

  // serve and migrate: the node's configuration.
  std::map<std::string, std::string> serve_values;
  std::optional<std::string> config_path;
  CLI::App* serve = nullptr;
  CLI::App* migrate = nullptr;

  runner::app::SubmitArgs submit_args;
  CLI::App* submit = nullptr;
  CLI::App* status = nullptr;
  std::optional<std::string> list_state, list_queue;
  int list_limit = 50;
  CLI::App* list = nullptr;
  std::string logs_id, logs_stream = "all";
  bool logs_follow = false;
  CLI::App* logs = nullptr;
  std::string cancel_id;
  CLI::App* cancel = nullptr;

  CLI::App* workers = nullptr;
  int scale_count = 0;
  CLI::App* scale = nullptr;
  bool stop_force = false;
  std::optional<double> stop_drain;
  CLI::App* stop = nullptr;
  CLI::App* start = nullptr;

  CLI::App* queues = nullptr;
  runner::app::QueueSetArgs queue_set;
  CLI::App* queue_set_cmd = nullptr;
  std::string queue_name;
  CLI::App* queue_pause = nullptr;
  CLI::App* queue_resume = nullptr;

  CLI::App* schedules = nullptr;
  runner::app::ScheduleArgs schedule_args;
  CLI::App* schedule_add = nullptr;
  std::string schedule_name;
  std::vector<std::pair<std::string, CLI::App*>> schedule_actions;
};

void AddNodeCommands(Cli& c) {
  auto add_config = [&](CLI::App* cmd, bool all) {
    cmd->add_option("--config", c.config_path, "YAML configuration file (RUNNER_CONFIG)");
    for (const auto& f : runner::ConfigFlags()) {
      if (!all && f.name != "database-url" && f.name != "data-dir") continue;
      cmd->add_option("--" + f.name, c.serve_values[f.name], f.help);
    }
  };
  c.serve = c.app.add_subcommand("serve", "run a node: the worker pool, REST API and dashboard");
  add_config(c.serve, true);
  c.migrate = c.app.add_subcommand("migrate", "apply the database schema and exit");
  add_config(c.migrate, false);
}

void AddTaskCommands(Cli& c) {
  c.submit = c.app.add_subcommand("submit", "submit a task: runner submit [opts] -- CMD ARGS...");
  AddClientOptions(c.submit, c.ctx, c.token);
  c.submit->add_option("command", c.submit_args.command, "the command and its arguments, after --")
      ->required();
  AddTaskOptions(c.submit, c.submit_args);
  c.submit->add_flag("--wait,-w", c.submit_args.wait, "wait and exit with the task's exit code");

  c.status = c.app.add_subcommand("status", "show the pool, queue and host");
  AddClientOptions(c.status, c.ctx, c.token);

  c.list = c.app.add_subcommand("list", "list tasks, newest first");
  AddClientOptions(c.list, c.ctx, c.token);
  c.list->add_option("--state", c.list_state,
                     "queued, running, succeeded, failed, cancelled, "
                     "timed_out");
  c.list->add_option("--queue", c.list_queue, "only this queue");
  c.list->add_option("--limit", c.list_limit, "at most this many (1..1000)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();

  c.logs = c.app.add_subcommand("logs", "print a task's output");
  AddClientOptions(c.logs, c.ctx, c.token);
  c.logs->add_option("id", c.logs_id, "task id")->required();
  c.logs->add_flag("--follow,-f", c.logs_follow, "follow live until the task ends");
  c.logs->add_option("--stream", c.logs_stream, "stdout, stderr or all")
      ->check(CLI::IsMember({"stdout", "stderr", "all"}))
      ->capture_default_str();

  c.cancel = c.app.add_subcommand("cancel", "cancel a task");
  AddClientOptions(c.cancel, c.ctx, c.token);
  c.cancel->add_option("id", c.cancel_id, "task id")->required();
}

void AddPoolCommands(Cli& c) {
  c.workers = c.app.add_subcommand("workers", "list the workers of all live nodes");
  AddClientOptions(c.workers, c.ctx, c.token);

  c.scale = c.app.add_subcommand("scale", "set the number of workers");
  AddClientOptions(c.scale, c.ctx, c.token);
  c.scale->add_option("count", c.scale_count, "workers wanted (1..max-workers)")->required();

  c.stop = c.app.add_subcommand("stop", "stop the pool (graceful unless --force)");
  AddClientOptions(c.stop, c.ctx, c.token);
  c.stop->add_flag("--force", c.stop_force, "stop running tasks at once and requeue them");
  c.stop->add_option("--drain-timeout", c.stop_drain, "seconds to let running tasks finish");

  c.start = c.app.add_subcommand("start", "start the pool again after stop");
  AddClientOptions(c.start, c.ctx, c.token);
}

void AddQueueCommands(Cli& c) {
  c.queues = c.app.add_subcommand("queues", "list queues: counts, policy, throttle state");
  AddClientOptions(c.queues, c.ctx, c.token);
  auto* queue_cmd = c.app.add_subcommand("queue", "set, pause or resume a queue's policy");
  queue_cmd->require_subcommand(1);
  c.queue_set_cmd = queue_cmd->add_subcommand("set", "replace a queue's policy");
  AddClientOptions(c.queue_set_cmd, c.ctx, c.token);
  c.queue_set_cmd->add_option("name", c.queue_set.name, "queue name")->required();
  c.queue_set_cmd->add_option("--max-running", c.queue_set.max_running, "tasks running at once");
  c.queue_set_cmd->add_option("--max-running-per-group", c.queue_set.max_running_per_group,
                              "tasks running at once per group");
  c.queue_set_cmd->add_option("--rate", c.queue_set.rate, "COUNT/SECONDS: starts per window");
  c.queue_set_cmd->add_flag("--paused", c.queue_set.paused, "start nothing of this queue");
  c.queue_pause = queue_cmd->add_subcommand("pause", "start no task of the queue");
  AddClientOptions(c.queue_pause, c.ctx, c.token);
  c.queue_pause->add_option("name", c.queue_name, "queue name")->required();
  c.queue_resume = queue_cmd->add_subcommand("resume", "start its tasks again");
  AddClientOptions(c.queue_resume, c.ctx, c.token);
  c.queue_resume->add_option("name", c.queue_name, "queue name")->required();
}

void AddScheduleCommands(Cli& c) {
  c.schedules = c.app.add_subcommand("schedules", "list the schedules");
  AddClientOptions(c.schedules, c.ctx, c.token);
  auto* schedule =
      c.app.add_subcommand("schedule", "add, remove, pause, resume or trigger a schedule");
  schedule->require_subcommand(1);
  runner::app::ScheduleArgs& args = c.schedule_args;
  c.schedule_add = schedule->add_subcommand(
      "add", "runner schedule add NAME (--cron EXPR [--timezone TZ] | --every S) [opts] -- CMD...");
  CLI::App* add = c.schedule_add;
  AddClientOptions(add, c.ctx, c.token);
  add->add_option("name", args.name, "the schedule's name")->required();
  add->add_option("command", args.task.command, "the command, after --")->required();
  add->add_option("--cron", args.cron, "cron expression, e.g. '30 3 * * *'");
  add->add_option("--timezone", args.timezone, "IANA zone of --cron (UTC)");
  add->add_option("--every", args.every, "seconds between runs (>= 1)");
  add->add_option("--overlap", args.overlap, "skip, allow or cancel_previous")
      ->check(CLI::IsMember({"skip", "allow", "cancel_previous"}));
  add->add_option("--catch-up", args.catch_up, "none, latest or all")
      ->check(CLI::IsMember({"none", "latest", "all"}));
  add->add_flag("--paused", args.paused, "create it paused");
  AddTaskOptions(add, args.task);
  for (const char* action : {"rm", "pause", "resume", "trigger"}) {
    auto* cmd = schedule->add_subcommand(action, std::string(action) + " a schedule");
    AddClientOptions(cmd, c.ctx, c.token);
    cmd->add_option("name", c.schedule_name, "the schedule's name")->required();
    c.schedule_actions.emplace_back(action, cmd);
  }
}

// serve or migrate: the configuration from flags, file and environment.
int RunNodeCommand(Cli& c) {
  runner::ConfigSources sources;
  CLI::App* cmd = c.serve->parsed() ? c.serve : c.migrate;
  for (const auto& [name, value] : c.serve_values) {
    if (cmd->get_option_no_throw("--" + name) != nullptr &&
        cmd->get_option("--" + name)->count() > 0) {
      sources.flags[name] = value;
    }
  }
  sources.config_path = c.config_path ? c.config_path : Env("RUNNER_CONFIG");
  auto config = runner::LoadConfig(sources);
  if (!config) {
    std::cerr << "runner " << cmd->get_name() << ": " << config.error().message << "\n";
    return 2;
  }
  return c.serve->parsed() ? runner::app::RunServe(*config) : runner::app::RunMigrate(*config);
}

// The parsed client command's exit code.
int RunClientCommand(Cli& c) {
  using namespace runner::app;
  if (c.submit->parsed()) return RunSubmit(c.ctx, c.submit_args);
  if (c.status->parsed()) return RunStatus(c.ctx);
  if (c.list->parsed()) return RunList(c.ctx, c.list_state, c.list_queue, c.list_limit);
  if (c.workers->parsed()) return RunWorkers(c.ctx);
  if (c.scale->parsed()) return RunScale(c.ctx, c.scale_count);
  if (c.stop->parsed()) return RunStop(c.ctx, c.stop_force, c.stop_drain);
  if (c.start->parsed()) return RunStart(c.ctx);
  if (c.logs->parsed()) return RunLogs(c.ctx, c.logs_id, c.logs_follow, c.logs_stream);
  if (c.cancel->parsed()) return RunCancel(c.ctx, c.cancel_id);
  if (c.schedules->parsed()) return RunSchedules(c.ctx);
  if (c.schedule_add->parsed()) return RunScheduleAdd(c.ctx, c.schedule_args);
  for (const auto& [action, cmd] : c.schedule_actions) {
    if (cmd->parsed()) return RunScheduleAction(c.ctx, action, c.schedule_name);
  }
  if (c.queues->parsed()) return RunQueues(c.ctx);
  if (c.queue_set_cmd->parsed()) return RunQueueSet(c.ctx, c.queue_set);
  if (c.queue_pause->parsed()) return RunQueuePause(c.ctx, c.queue_name, true);
  if (c.queue_resume->parsed()) return RunQueuePause(c.ctx, c.queue_name, false);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Cli c;
  c.app.require_subcommand(1);
  if (auto server = Env("RUNNER_SERVER"); server && !server->empty()) c.ctx.client.server = *server;
  if (auto env_token = Env("RUNNER_API_TOKEN")) c.token = *env_token;
  AddNodeCommands(c);
  AddTaskCommands(c);
  AddPoolCommands(c);
  AddQueueCommands(c);
  AddScheduleCommands(c);

  std::vector<std::string> args = ClientFlagsAfterSubcommand(c.app, argc, argv);
  std::vector<char*> arg_ptrs;
  for (auto& a : args) arg_ptrs.push_back(a.data());
  try {
    c.app.parse(static_cast<int>(arg_ptrs.size()), arg_ptrs.data());
  } catch (const CLI::CallForHelp& e) {
    return c.app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return c.app.exit(e);
  } catch (const CLI::ParseError& e) {
    c.app.exit(e);
    return 2;
  }
  if (!c.token.empty()) c.ctx.client.token = c.token;
  if (c.serve->parsed() || c.migrate->parsed()) return RunNodeCommand(c);
  return RunClientCommand(c);
}
