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

// --server/--token/--json on a client command.
void AddClientOptions(CLI::App* cmd, runner::app::CommandContext& ctx, std::string& token) {
  cmd->add_option("--server", ctx.client.server, "server URL")
      ->envname("RUNNER_SERVER")
      ->capture_default_str();
  cmd->add_option("--token", token, "API token (Authorization: Bearer)")
      ->envname("RUNNER_API_TOKEN");
  cmd->add_flag("--json", ctx.json, "print the API's JSON instead of a table");
}

// The client flags may come before the subcommand too (`runner --server URL
// status`): they are moved to just after it, where the subcommand's own
// options take them, so both spellings mean the same.
std::vector<std::string> ClientFlagsAfterSubcommand(int argc, char** argv) {
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
  std::vector<std::string> out{args[0], args[i]};
  out.insert(out.end(), moved.begin(), moved.end());
  out.insert(out.end(), args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"runner: a job runner appliance (REST API, CLI, dashboard)", "runner"};
  app.require_subcommand(1);

  runner::app::CommandContext ctx;
  std::string token;

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
  submit->add_option("--image", submit_args.image, "Docker image (default: the server's)");
  submit->add_option("--isolation", submit_args.isolation, "auto, docker or process")
      ->check(CLI::IsMember({"auto", "docker", "process"}));
  submit->add_option("--cpus", submit_args.cpus, "CPU cores, e.g. 0.5");
  submit->add_option("--memory", submit_args.memory, "memory limit: bytes or 256M, 1G");
  submit->add_option("--disk", submit_args.disk, "disk limit: bytes or 100M, 1G");
  submit->add_option("--pids", submit_args.pids, "process/thread limit");
  submit->add_option("--timeout", submit_args.timeout, "seconds (0 = none)");
  submit->add_option("--delay", submit_args.delay, "seconds before it may run");
  submit->add_option("--priority", submit_args.priority, "higher runs first");
  submit->add_option("--queue", submit_args.queue, "queue name (default: default)");
  submit->add_option("--max-attempts", submit_args.max_attempts, "attempts before it fails");
  submit->add_option("--env,-e", submit_args.env, "KEY=VALUE (repeatable)")
      ->allow_extra_args(false);
  submit
      ->add_option("--secret,-s", submit_args.secrets,
                   "NAME=VALUE, or NAME to take the value from the environment (repeatable); "
                   "never shown back, masked in output")
      ->allow_extra_args(false);
  submit->add_option("--label,-l", submit_args.labels, "KEY=VALUE (repeatable)")
      ->allow_extra_args(false);
  submit->add_option("--depends-on", submit_args.depends_on, "task id (repeatable)")
      ->allow_extra_args(false);
  submit->add_option("--idempotency-key", submit_args.idempotency_key,
                     "same key -> the same task, never a second one");
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

  std::string cancel_id;
  auto* cancel = app.add_subcommand("cancel", "cancel a task");
  AddClientOptions(cancel, ctx, token);
  cancel->add_option("id", cancel_id, "task id")->required();

  std::vector<std::string> args = ClientFlagsAfterSubcommand(argc, argv);
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
  return 2;
}
