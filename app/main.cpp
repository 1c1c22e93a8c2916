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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runner: a job runner appliance (REST API, CLI, dashboard)", "runner"};
  app.require_subcommand(1);

  runner::app::CommandContext ctx;
  std::string token;
  if (auto server = Env("RUNNER_SERVER"); server && !server->empty()) ctx.client.server = *server;
  if (auto env_token = Env("RUNNER_API_TOKEN")) token = *env_token;

  // serve and migrate: the node's configuration.
  std::map<std::string, std::string> serve_values;
  std::optional<std::string> config_path;
  auto add_config = [&](CLI::App* cmd, bool all) {
    cmd->add_option("--config", config_path, "YAML configuration file (RUNNER_CONFIG)");
    for (const auto& f : runner::ConfigFlags()) {
      if (!all && f.name != "database-url" && f.name != "data-dir") continue;
      cmd->add_option("--" + f.name, serve_values[f.name], f.help);
    }
  };
  auto* serve = app.add_subcommand("serve", "run a node: the worker pool, REST API and dashboard");
  add_config(serve, true);
  auto* migrate = app.add_subcommand("migrate", "apply the database schema and exit");
  add_config(migrate, false);

  runner::app::SubmitArgs submit_args;
  auto* submit = app.add_subcommand("submit", "submit a task: runner submit [opts] -- CMD ARGS...");
  AddClientOptions(submit, ctx, token);
  submit->add_option("command", submit_args.command, "the command and its arguments, after --")
      ->required();
  AddTaskOptions(submit, submit_args);
  submit->add_flag("--wait,-w", submit_args.wait, "wait and exit with the task's exit code");

  auto* status = app.add_subcommand("status", "show the pool, queue and host");
  AddClientOptions(status, ctx, token);

  std::optional<std::string> list_state, list_queue;
  int list_limit = 50;
  auto* list = app.add_subcommand("list", "list tasks, newest first");
  AddClientOptions(list, ctx, token);
  list->add_option("--state", list_state,
                   "queued, running, succeeded, failed, cancelled, "
                   "timed_out");
  list->add_option("--queue", list_queue, "only this queue");
  list->add_option("--limit", list_limit, "at most this many (1..1000)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();

  auto* workers = app.add_subcommand("workers", "list the workers of all live nodes");
  AddClientOptions(workers, ctx, token);

  int scale_count = 0;
  auto* scale = app.add_subcommand("scale", "set the number of workers");
  AddClientOptions(scale, ctx, token);
  scale->add_option("count", scale_count, "workers wanted (1..max-workers)")->required();

  bool stop_force = false;
  std::optional<double> stop_drain;
  auto* stop = app.add_subcommand("stop", "stop the pool (graceful unless --force)");
  AddClientOptions(stop, ctx, token);
  stop->add_flag("--force", stop_force, "stop running tasks at once and requeue them");
  stop->add_option("--drain-timeout", stop_drain, "seconds to let running tasks finish");

  auto* start = app.add_subcommand("start", "start the pool again after stop");
  AddClientOptions(start, ctx, token);

  std::string logs_id, logs_stream = "all";
  bool logs_follow = false;
  auto* logs = app.add_subcommand("logs", "print a task's output");
  AddClientOptions(logs, ctx, token);
  logs->add_option("id", logs_id, "task id")->required();
  logs->add_flag("--follow,-f", logs_follow, "follow live until the task ends");
  logs->add_option("--stream", logs_stream, "stdout, stderr or all")
      ->check(CLI::IsMember({"stdout", "stderr", "all"}))
      ->capture_default_str();

  auto* queues = app.add_subcommand("queues", "list queues: counts, policy, throttle state");
  AddClientOptions(queues, ctx, token);
  auto* queue_cmd = app.add_subcommand("queue", "set, pause or resume a queue's policy");
  queue_cmd->require_subcommand(1);
  runner::app::QueueSetArgs queue_set;
  auto* queue_set_cmd = queue_cmd->add_subcommand("set", "replace a queue's policy");
  AddClientOptions(queue_set_cmd, ctx, token);
  queue_set_cmd->add_option("name", queue_set.name, "queue name")->required();
  queue_set_cmd->add_option("--max-running", queue_set.max_running, "tasks running at once");
  queue_set_cmd->add_option("--max-running-per-group", queue_set.max_running_per_group,
                            "tasks running at once per group");
  queue_set_cmd->add_option("--rate", queue_set.rate, "COUNT/SECONDS: starts per window");
  queue_set_cmd->add_flag("--paused", queue_set.paused, "start nothing of this queue");
  std::string queue_name;
  auto* queue_pause = queue_cmd->add_subcommand("pause", "start no task of the queue");
  AddClientOptions(queue_pause, ctx, token);
  queue_pause->add_option("name", queue_name, "queue name")->required();
  auto* queue_resume = queue_cmd->add_subcommand("resume", "start its tasks again");
  AddClientOptions(queue_resume, ctx, token);
  queue_resume->add_option("name", queue_name, "queue name")->required();

  std::string cancel_id;
  auto* cancel = app.add_subcommand("cancel", "cancel a task");
  AddClientOptions(cancel, ctx, token);
  cancel->add_option("id", cancel_id, "task id")->required();

  auto* schedules = app.add_subcommand("schedules", "list the schedules");
  AddClientOptions(schedules, ctx, token);
  auto* schedule =
      app.add_subcommand("schedule", "add, remove, pause, resume or trigger a schedule");
  schedule->require_subcommand(1);
  runner::app::ScheduleArgs schedule_args;
  auto* schedule_add = schedule->add_subcommand(
      "add", "runner schedule add NAME (--cron EXPR [--timezone TZ] | --every S) [opts] -- CMD...");
  AddClientOptions(schedule_add, ctx, token);
  schedule_add->add_option("name", schedule_args.name, "the schedule's name")->required();
  schedule_add->add_option("command", schedule_args.task.command, "the command, after --")
      ->required();
  schedule_add->add_option("--cron", schedule_args.cron, "cron expression, e.g. '30 3 * * *'");
  schedule_add->add_option("--timezone", schedule_args.timezone, "IANA zone of --cron (UTC)");
  schedule_add->add_option("--every", schedule_args.every, "seconds between runs (>= 1)");
  schedule_add->add_option("--overlap", schedule_args.overlap, "skip, allow or cancel_previous")
      ->check(CLI::IsMember({"skip", "allow", "cancel_previous"}));
  schedule_add->add_option("--catch-up", schedule_args.catch_up, "none, latest or all")
      ->check(CLI::IsMember({"none", "latest", "all"}));
  schedule_add->add_flag("--paused", schedule_args.paused, "create it paused");
  AddTaskOptions(schedule_add, schedule_args.task);
  std::string schedule_name;
  std::vector<std::pair<std::string, CLI::App*>> schedule_actions;
  for (const char* action : {"rm", "pause", "resume", "trigger"}) {
    auto* cmd = schedule->add_subcommand(action, std::string(action) + " a schedule");
    AddClientOptions(cmd, ctx, token);
    cmd->add_option("name", schedule_name, "the schedule's name")->required();
    schedule_actions.emplace_back(action, cmd);
  }

  std::vector<std::string> args = ClientFlagsAfterSubcommand(app, argc, argv);
  std::vector<char*> arg_ptrs;
  for (auto& a : args) arg_ptrs.push_back(a.data());
  try {
    app.parse(static_cast<int>(arg_ptrs.size()), arg_ptrs.data());
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  if (!token.empty()) ctx.client.token = token;

  if (serve->parsed() || migrate->parsed()) {
    runner::ConfigSources sources;
    CLI::App* cmd = serve->parsed() ? serve : migrate;
    for (const auto& [name, value] : serve_values) {
      if (cmd->get_option_no_throw("--" + name) != nullptr &&
          cmd->get_option("--" + name)->count() > 0) {
        sources.flags[name] = value;
      }
    }
    sources.config_path = config_path ? config_path : Env("RUNNER_CONFIG");
    auto config = runner::LoadConfig(sources);
    if (!config) {
      std::cerr << "runner " << cmd->get_name() << ": " << config.error().message << "\n";
      return 2;
    }
    return serve->parsed() ? runner::app::RunServe(*config) : runner::app::RunMigrate(*config);
  }
  if (submit->parsed()) return runner::app::RunSubmit(ctx, submit_args);
  if (status->parsed()) return runner::app::RunStatus(ctx);
  if (list->parsed()) return runner::app::RunList(ctx, list_state, list_queue, list_limit);
  if (workers->parsed()) return runner::app::RunWorkers(ctx);
  if (scale->parsed()) return runner::app::RunScale(ctx, scale_count);
  if (stop->parsed()) return runner::app::RunStop(ctx, stop_force, stop_drain);
  if (start->parsed()) return runner::app::RunStart(ctx);
  if (logs->parsed()) return runner::app::RunLogs(ctx, logs_id, logs_follow, logs_stream);
  if (cancel->parsed()) return runner::app::RunCancel(ctx, cancel_id);
  if (schedules->parsed()) return runner::app::RunSchedules(ctx);
  if (schedule_add->parsed()) return runner::app::RunScheduleAdd(ctx, schedule_args);
  for (const auto& [action, cmd] : schedule_actions) {
    if (cmd->parsed()) return runner::app::RunScheduleAction(ctx, action, schedule_name);
  }
  if (queues->parsed()) return runner::app::RunQueues(ctx);
  if (queue_set_cmd->parsed()) return runner::app::RunQueueSet(ctx, queue_set);
  if (queue_pause->parsed()) return runner::app::RunQueuePause(ctx, queue_name, true);
  if (queue_resume->parsed()) return runner::app::RunQueuePause(ctx, queue_name, false);
  return 2;
}
