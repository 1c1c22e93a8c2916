#include "app/serve.h"

#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include "api/auth.h"
#include "api/server.h"
#include "runner/embedded/postgres_cluster.h"
#include "runner/metrics/registry.h"
#include "runner/node/node.h"
#include "runner/queue/migrations.h"

namespace runner::app {
namespace {

// The database of this node: the configured URL, or the embedded cluster.
struct Database {
  std::unique_ptr<embedded::EmbeddedPostgres> embedded;
  std::string conninfo;
};

Result<Database> OpenDatabase(const Config& config) {
  Database db;
  if (config.database_url) {
    db.conninfo = *config.database_url;
    return db;
  }
  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  if (ec) {
    return MakeError("validation_failed", "cannot create --data-dir " + config.data_dir + ": " +
                                              ec.message() +
                                              "; pick a writable directory or give "
                                              "--database-url");
  }
  auto pg = embedded::EmbeddedPostgres::Start(config.data_dir);
  if (!pg) return pg.error();
  db.conninfo = (*pg)->conninfo();
  db.embedded = std::move(*pg);
  spdlog::info("serve: embedded PostgreSQL started data_dir={} version={}", config.data_dir,
               db.embedded->version());
  return db;
}

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Waits for SIGINT/SIGTERM up to `timeout` (forever when nullopt).
std::optional<int> WaitSignal(const sigset_t& set, std::optional<std::chrono::seconds> timeout) {
  for (;;) {
    int sig = 0;
    if (!timeout) {
      if (sigwait(&set, &sig) == 0) return sig;
      continue;
    }
    timespec ts{static_cast<time_t>(timeout->count()), 0};
    siginfo_t info{};
    int r = sigtimedwait(&set, &info, &ts);
    if (r > 0) return r;
    if (errno == EAGAIN) return std::nullopt;
  }
}

}  // namespace

int RunMigrate(const Config& config) {
  auto db = OpenDatabase(config);
  if (!db) {
    std::cerr << "runner migrate: " << db.error().message << "\n";
    return 1;
  }
  if (auto st = queue::Migrate(db->conninfo); !st) {
    std::cerr << "runner migrate: " << st.error().message << "\n";
    return 1;
  }
  std::cout << "schema is up to date\n";
  return 0;
}

int RunServe(const Config& config) {
  // Every API connection is a descriptor: take the hard limit before any
  // thread, child process or database connection exists. (It was in
  // RunMigrate by mistake, so serve raised it only when the API bound, after
  // the embedded PostgreSQL and the node were up.)
  api::RaiseOpenFilesLimit();
  // Signals are taken synchronously by this thread only: block them before
  // any other thread starts, so every thread inherits the mask.
  sigset_t stop_signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  api::ApiOptions api_options;
  api_options.listen = config.listen;
  api_options.api_token = config.api_token;
  api_options.default_drain_timeout =
      std::chrono::seconds(static_cast<int64_t>(config.drain_timeout));

  // Every check of the configuration comes before anything is created: a
  // refused start leaves the data dir, the database and the queue untouched
  // (a node that claimed tasks before refusing would strand them).
  if (auto st = api::CheckListen(api_options.listen, api_options.api_token); !st) {
    std::cerr << "runner serve: " << st.error().message << "\n";
    return 1;
  }
  auto db = OpenDatabase(config);
  if (!db) {
    std::cerr << "runner serve: " << db.error().message << "\n";
    return 1;
  }
  metrics::Registry registry;
  auto node = node::Node::Create(config, db->conninfo, registry);
  if (!node) {
    std::cerr << "runner serve: " << node.error().message << "\n";
    return 1;
  }
  // The listen address is bound before the node starts: a port in use (say,
  // another runner on this host) fails here, before the pool registers,
  // claims a task on a shared database or the scheduler fires a schedule.
  auto server = std::make_unique<api::ApiServer>(api_options, (*node)->store(), **node, registry);
  server->SetSchedules(&(*node)->schedules());
  if (auto st = server->Listen(); !st) {
    std::cerr << "runner serve: " << st.error().message << "\n";
    return 1;
  }
  if (auto st = (*node)->Start(); !st) {
    std::cerr << "runner serve: " << st.error().message << "\n";
    return 1;
  }
  if (auto st = server->Start(); !st) {
    std::cerr << "runner serve: " << st.error().message << "\n";
    (*node)->Shutdown(StopOptions{true, std::chrono::seconds(0)});
    return 1;
  }
  std::cerr << "runner: serving on http://" << config.listen.substr(0, config.listen.rfind(':'))
            << ":" << server->port() << " (dashboard, /api/v1, /metrics)\n";

  int sig = WaitSignal(stop_signals, std::nullopt).value_or(SIGTERM);
  spdlog::info("serve: signal={} draining drain_timeout_s={}", sig, config.drain_timeout);
  std::cerr << "runner: draining (up to " << config.drain_timeout
            << " s); send the signal again to stop at once\n";
  StopOptions graceful;
  graceful.force = false;
  graceful.drain_timeout = api_options.default_drain_timeout;
  std::atomic<bool> drained{false};
  std::thread drain([&] {
    (*node)->Shutdown(graceful);
    drained = true;
    // Wake the waiting main thread.
    kill(getpid(), SIGTERM);
  });
  for (;;) {
    auto again = WaitSignal(stop_signals, std::chrono::seconds(1));
    if (drained) break;
    if (again) {
      spdlog::warn("serve: second signal, forcing the stop");
      std::cerr << "runner: forcing the stop\n";
      (*node)->Shutdown(StopOptions{true, std::chrono::seconds(0)});
      break;
    }
  }
  drain.join();
  server->Stop();
  server.reset();
  node->reset();
  db->embedded.reset();
  spdlog::info("serve: stopped");
  return 0;
}

}  // namespace runner::app
