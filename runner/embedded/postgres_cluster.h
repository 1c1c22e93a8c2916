#pragma once

// The embedded default: `runner serve` without --database-url owns a private
// PostgreSQL cluster under <data-dir>/postgres, found from Debian's server
// binaries (/usr/lib/postgresql/<newest>/bin, else pg_ctl/initdb on PATH).
//
//   auto pg = embedded::EmbeddedPostgres::Start(config.data_dir);
//   if (!pg.ok()) { /* pg.error().message says how to fix it */ }
//   queue::PostgresStore store((*pg)->conninfo(), ...);
//   ...  // destroying *pg stops the cluster (pg_ctl stop -m fast)
//
// Start() runs initdb on the first start (trust auth on a unix socket only,
// no TCP listener, the socket directory inside the data dir), starts the server
// with `pg_ctl -w`, creates the database `runner`, and reuses the cluster on the
// next start. A crashed earlier run is recovered: a postmaster it left running
// is stopped and started again, a stale postmaster.pid is removed. As root the
// server runs as the `postgres` system user (PostgreSQL refuses to run as root).
// One runner per data dir: a second Start() on the same dir fails with a clear
// message while the first owns it (an flock, released when the process dies).
// Every wait is bounded (Options).
//
// Layout: <data-dir>/postgres/{data,run,log/postgres.log,runner.lock}.
//
// Thread-safety: Start() may be called from any thread; an instance is owned by
// one thread (its accessors are const and safe to call from any thread).

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "base/result.h"

namespace runner::embedded {

class EmbeddedPostgres {
 public:
  struct Options {
    // Directory holding initdb, pg_ctl and postgres. Empty: search
    // /usr/lib/postgresql/<newest>/bin, then PATH.
    std::filesystem::path bin_dir;
    std::string database = "runner";
    std::chrono::seconds initdb_timeout{120};
    std::chrono::seconds start_timeout{60};
    std::chrono::seconds stop_timeout{30};
    int max_connections = 200;
  };

  static Result<std::unique_ptr<EmbeddedPostgres>> Start(const std::filesystem::path& data_dir);
  static Result<std::unique_ptr<EmbeddedPostgres>> Start(const std::filesystem::path& data_dir,
                                                         const Options& options);

  // Stops the server (fast shutdown: open sessions are disconnected, no data lost).
  ~EmbeddedPostgres();
  EmbeddedPostgres(const EmbeddedPostgres&) = delete;
  EmbeddedPostgres& operator=(const EmbeddedPostgres&) = delete;

  // libpq key=value conninfo of the `runner` database ("host=<socket dir> port=5432
  // user=postgres dbname=runner connect_timeout=10").
  const std::string& conninfo() const { return conninfo_; }
  // The same as a postgresql:// URL (socket dir percent-encoded), for logs and
  // for anything that takes --database-url.
  std::string url() const;
  // <data-dir>/postgres/data
  const std::filesystem::path& cluster_dir() const { return cluster_dir_; }
  const std::filesystem::path& socket_dir() const { return socket_dir_; }
  const std::filesystem::path& log_file() const { return log_file_; }
  // PostgreSQL major version of the binaries in use ("15").
  const std::string& version() const { return version_; }

  // Stops the server now; the destructor then does nothing. Idempotent.
  Status Stop();

 private:
  EmbeddedPostgres() = default;

  std::filesystem::path bin_dir_;
  std::filesystem::path root_;  // <data-dir>/postgres
  std::filesystem::path cluster_dir_;
  std::filesystem::path socket_dir_;
  std::filesystem::path log_file_;
  std::string version_;
  std::string conninfo_;
  std::string database_;
  Options options_;
  int lock_fd_ = -1;
  // uid/gid the server runs as when we are root (-1: ourselves).
  int run_uid_ = -1;
  int run_gid_ = -1;
  bool running_ = false;
};

}  // namespace runner::embedded
