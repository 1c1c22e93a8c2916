#include "runner/embedded/postgres_cluster.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <pqxx/pqxx>
#include <sstream>
#include <system_error>
#include <vector>

namespace runner::embedded {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kPort = 5432;
// sun_path is 108 bytes; ".s.PGSQL.5432.lock" must fit after the directory.
constexpr size_t kMaxSocketDirLength = 88;
constexpr size_t kOutputCap = 64 * 1024;

constexpr const char* kDatabaseExists = "SELECT 1 FROM pg_database WHERE datname = $1";

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr, the last kOutputCap bytes
};

struct RunAs {
  uid_t uid;
  gid_t gid;
};

Error Unavailable(std::string message) { return MakeError("unavailable", std::move(message)); }

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

// Runs argv (argv[0] an absolute path) with stdout+stderr captured, as `as` when
// given, in its own process group, killed as a group when `timeout` passes.
Result<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout,
                                 const std::optional<RunAs>& as) {
  // Everything the child needs is prepared before fork: after it, only
  // async-signal-safe calls.
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return MakeError("internal", std::string("pipe2: ") + std::strerror(errno));
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return MakeError("internal", std::string("fork: ") + std::strerror(err));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    // The runner may block signals for its own handling; PostgreSQL must get them.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::signal(sig, SIG_DFL);
    }
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    if (as) {
      gid_t gid = as->gid;
      if (::setgroups(1, &gid) != 0 || ::setgid(as->gid) != 0 || ::setuid(as->uid) != 0) {
        const char msg[] = "cannot switch to the postgres user\n";
        ssize_t ignored = ::write(2, msg, sizeof(msg) - 1);
        (void)ignored;
        ::_exit(126);
      }
    }
    // initdb and pg_ctl check that they can read the current directory.
    if (::chdir("/") != 0) ::_exit(126);
    ::execv(args[0], args.data());
    const char msg[] = "exec failed\n";
    ssize_t ignored = ::write(2, msg, sizeof(msg) - 1);
    (void)ignored;
    ::_exit(127);
  }
  ::close(fds[1]);
  int rfd = fds[0];
  ::fcntl(rfd, F_SETFL, ::fcntl(rfd, F_GETFL) | O_NONBLOCK);

  CommandResult result;
  auto append = [&result](const char* data, size_t n) {
    result.output.append(data, n);
    if (result.output.size() > kOutputCap) {
      result.output.erase(0, result.output.size() - kOutputCap);
    }
  };
  auto drain = [&]() {
    char buf[4096];
    while (true) {
      ssize_t n = ::read(rfd, buf, sizeof(buf));
      if (n > 0) {
        append(buf, static_cast<size_t>(n));
        continue;
      }
      return n == 0;  // true at EOF
    }
  };

  const auto deadline = Clock::now() + timeout;
  int status = 0;
  bool exited = false;
  bool eof = false;
  while (true) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      exited = true;
      break;
    }
    if (Clock::now() >= deadline) break;
    if (eof) {
      // The pipe closed but the child lives on: wait without reading.
      ::usleep(20 * 1000);
      continue;
    }
    pollfd pfd{rfd, POLLIN, 0};
    ::poll(&pfd, 1, 50);
    eof = drain();
  }
  if (!exited) {
    ::kill(-pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ::close(rfd);
    return MakeError("timed_out", argv[0] + " did not finish within " +
                                      std::to_string(timeout.count() / 1000) +
                                      " s; output: " + Trimmed(result.output));
  }
  // Grandchildren (a postmaster) may hold the pipe: read what is there, no more.
  drain();
  ::close(rfd);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::optional<int> MajorVersion(const std::string& name) {
  if (name.empty() || !std::all_of(name.begin(), name.end(),
                                   [](char c) { return (c >= '0' && c <= '9') || c == '.'; })) {
    return std::nullopt;
  }
  return std::atoi(name.c_str());
}

bool HasServerBinaries(const fs::path& dir) {
  std::error_code ec;
  for (const char* b : {"initdb", "pg_ctl", "postgres"}) {
    if (!fs::is_regular_file(dir / b, ec) || ::access((dir / b).c_str(), X_OK) != 0) return false;
  }
  return true;
}

std::string NotFoundMessage(const std::string& where) {
  return "PostgreSQL server binaries not found" + where +
         ": apt-get install postgresql (or pass --database-url to use an existing server)";
}

Result<fs::path> FindBinaries(const fs::path& configured) {
  if (!configured.empty()) {
    if (HasServerBinaries(configured)) return configured;
    return Unavailable(NotFoundMessage(" in " + configured.string()));
  }
  std::error_code ec;
  std::optional<std::pair<int, fs::path>> best;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    auto major = MajorVersion(entry.path().filename().string());
    if (!major || !HasServerBinaries(entry.path() / "bin")) continue;
    if (!best || *major > best->first) best = std::make_pair(*major, entry.path() / "bin");
  }
  if (best) return best->second;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      if (!dir.empty() && HasServerBinaries(dir)) return fs::path(dir);
    }
  }
  return Unavailable(NotFoundMessage(" (looked in /usr/lib/postgresql/*/bin and PATH)"));
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const fs::path& p, size_t max_lines) {
  std::string text = ReadFile(p);
  std::vector<std::string> lines;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) lines.push_back(line);
  std::string out;
  size_t from = lines.size() > max_lines ? lines.size() - max_lines : 0;
  for (size_t i = from; i < lines.size(); ++i) out += lines[i] + "\n";
  return Trimmed(out);
}

Status WriteFile(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return MakeError("internal", "cannot write " + p.string());
  return {};
}

// chown -R, for a cluster created or moved by another user.
Status ChownTree(const fs::path& root, uid_t uid, gid_t gid) {
  std::error_code ec;
  auto own = [&](const fs::path& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) return true;
    if (st.st_uid == uid && st.st_gid == gid) return true;
    return ::lchown(p.c_str(), uid, gid) == 0;
  };
  if (!own(root)) return MakeError("internal", "cannot chown " + root.string());
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!own(it->path())) return MakeError("internal", "cannot chown " + it->path().string());
  }
  if (ec) return MakeError("internal", "cannot walk " + root.string() + ": " + ec.message());
  return {};
}

// The postgres user must be able to reach the data dir. We add o+x only to the
// data dir itself and to the dirs this start created on the way to it (a 0700
// mktemp dir is fine); an existing parent (a 0700 home) is the operator's to
// change, so we say which one.
Status MakeTraversable(const fs::path& dir, const fs::path& first_existing_parent) {
  fs::path p = dir;
  while (true) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0 && (st.st_mode & S_IXOTH) == 0) {
      bool ours = p == dir || (p != first_existing_parent &&
                               p.string().rfind(first_existing_parent.string(), 0) == 0);
      if (ours && st.st_uid == ::geteuid() &&
          ::chmod(p.c_str(), (st.st_mode & 07777) | S_IXOTH) == 0) {
        spdlog::info("embedded postgres: made dir traversable for the postgres user dir={}",
                     p.string());
      } else {
        return Unavailable(
            "running as root, PostgreSQL runs as the postgres user, which cannot "
            "reach " +
            dir.string() + ": " + p.string() +
            " is not searchable by others; chmod o+x it, or choose a --data-dir "
            "outside it, or run the runner as a non-root user");
      }
    }
    if (p == p.root_path() || !p.has_parent_path() || p.parent_path() == p) break;
    p = p.parent_path();
  }
  return {};
}

std::string PercentEncode(const std::string& s) {
  std::string out;
  const char* hex = "0123456789ABCDEF";
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string ConfQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

// The pid in postmaster.pid when that process is alive and is a postgres.
std::optional<pid_t> LivePostmaster(const fs::path& cluster) {
  std::ifstream in(cluster / "postmaster.pid");
  long pid = 0;
  if (!(in >> pid) || pid <= 0) return std::nullopt;
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return std::nullopt;
  std::string comm = Trimmed(ReadFile("/proc/" + std::to_string(pid) + "/comm"));
  if (comm != "postgres" && comm != "postmaster") return std::nullopt;
  return static_cast<pid_t>(pid);
}

}  // namespace

Result<std::unique_ptr<EmbeddedPostgres>> EmbeddedPostgres::Start(const fs::path& data_dir) {
  return Start(data_dir, Options{});
}

Result<std::unique_ptr<EmbeddedPostgres>> EmbeddedPostgres::Start(const fs::path& data_dir,
                                                                  const Options& options) {
  // An existing cluster needs the major version that made it.
  fs::path wanted = options.bin_dir;
  if (wanted.empty()) {
    std::string made_by = Trimmed(ReadFile(data_dir / "postgres" / "data" / "PG_VERSION"));
    fs::path same = fs::path("/usr/lib/postgresql") / made_by / "bin";
    if (!made_by.empty() && HasServerBinaries(same)) wanted = same;
  }
  auto bin = FindBinaries(wanted);
  if (!bin.ok()) return bin.error();

  std::unique_ptr<EmbeddedPostgres> pg(new EmbeddedPostgres());
  pg->options_ = options;
  pg->database_ = options.database;
  pg->bin_dir_ = *bin;

  std::error_code ec;
  fs::path absolute = fs::absolute(data_dir, ec).lexically_normal();
  if (absolute.has_filename() == false) absolute = absolute.parent_path();
  fs::path first_existing = absolute;
  while (!fs::exists(first_existing, ec) && first_existing.has_parent_path() &&
         first_existing.parent_path() != first_existing) {
    first_existing = first_existing.parent_path();
  }
  fs::create_directories(absolute, ec);
  if (ec) return Unavailable("cannot create data dir " + absolute.string() + ": " + ec.message());
  pg->root_ = absolute / "postgres";
  pg->cluster_dir_ = pg->root_ / "data";
  pg->log_file_ = pg->root_ / "log" / "postgres.log";
  pg->socket_dir_ = pg->root_ / "run";
  fs::create_directories(pg->root_ / "log", ec);
  fs::create_directories(pg->socket_dir_, ec);
  if (ec) return Unavailable("cannot create " + pg->root_.string() + ": " + ec.message());
  if (pg->socket_dir_.string().size() > kMaxSocketDirLength) {
    // A unix socket path is limited to 107 bytes: fall back to a short private dir.
    pg->socket_dir_ = fs::path("/tmp") /
                      ("runner-pg-" + std::to_string(::geteuid()) + "-" +
                       std::to_string(std::hash<std::string>{}(pg->root_.string()) % 1000000007));
    fs::create_directories(pg->socket_dir_, ec);
    if (ec) return Unavailable("cannot create " + pg->socket_dir_.string() + ": " + ec.message());
    ::chmod(pg->socket_dir_.c_str(), 0700);
  }

  // One runner per data dir. O_CLOEXEC: the postmaster must not inherit the lock.
  fs::path lock_path = pg->root_ / "runner.lock";
  pg->lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (pg->lock_fd_ < 0) {
    return Unavailable("cannot open " + lock_path.string() + ": " + std::strerror(errno));
  }
  if (::flock(pg->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    std::string holder = Trimmed(ReadFile(lock_path));
    return Unavailable("the data dir " + absolute.string() + " is in use by another runner (pid " +
                       (holder.empty() ? "?" : holder) + "): stop it or choose another --data-dir");
  }
  if (::ftruncate(pg->lock_fd_, 0) == 0) {
    std::string me = std::to_string(::getpid()) + "\n";
    ssize_t ignored = ::pwrite(pg->lock_fd_, me.data(), me.size(), 0);
    (void)ignored;
  }

  std::optional<RunAs> as;
  if (::geteuid() == 0) {
    passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) {
      return Unavailable(
          "running as root, and PostgreSQL refuses to run as root: the `postgres` system user "
          "is missing (apt-get install postgresql creates it), or run the runner as a non-root "
          "user");
    }
    as = RunAs{pw->pw_uid, pw->pw_gid};
    pg->run_uid_ = static_cast<int>(pw->pw_uid);
    pg->run_gid_ = static_cast<int>(pw->pw_gid);
    if (auto st = MakeTraversable(absolute, first_existing); !st.ok()) return st.error();
    if (auto st = ChownTree(pg->root_, pw->pw_uid, pw->pw_gid); !st.ok()) return st.error();
    if (pg->socket_dir_.parent_path() == "/tmp") {
      ::lchown(pg->socket_dir_.c_str(), pw->pw_uid, pw->pw_gid);
    }
  }
  ::chmod(pg->root_.c_str(), 0700);

  auto run = [&](std::vector<std::string> argv, std::chrono::seconds timeout) {
    return RunCommand(argv, timeout, as);
  };
  const std::string pg_ctl = (pg->bin_dir_ / "pg_ctl").string();

  // First start: initdb into a scratch dir, renamed when complete, so a crash
  // during initdb never leaves a half-made cluster that looks real.
  if (!fs::exists(pg->cluster_dir_ / "PG_VERSION")) {
    fs::path scratch = pg->root_ / "data.initdb";
    fs::remove_all(scratch, ec);
    if (fs::exists(pg->cluster_dir_)) fs::remove_all(pg->cluster_dir_, ec);
    spdlog::info("embedded postgres: initdb dir={} bin={}", pg->cluster_dir_.string(),
                 pg->bin_dir_.string());
    auto r = run({(pg->bin_dir_ / "initdb").string(), "-D", scratch.string(), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"},
                 options.initdb_timeout);
    if (!r.ok()) return Unavailable("initdb failed: " + r.error().message);
    if (r->exit_code != 0) {
      return Unavailable("initdb failed (exit " + std::to_string(r->exit_code) +
                         "): " + Trimmed(r->output));
    }
    // Unix socket only, trust for its owner: no TCP listener at all.
    if (auto st = WriteFile(scratch / "pg_hba.conf",
                            "# Written by runner: unix socket only, the socket dir is 0700.\n"
                            "local all all trust\n");
        !st.ok()) {
      return st.error();
    }
    std::ofstream conf(scratch / "postgresql.conf", std::ios::app);
    conf << "\n# runner: settings rewritten at each start\ninclude_if_exists = 'runner.conf'\n";
    conf.close();
    if (as) {
      if (auto st = ChownTree(scratch, as->uid, as->gid); !st.ok()) return st.error();
    }
    fs::rename(scratch, pg->cluster_dir_, ec);
    if (ec) return Unavailable("cannot rename the new cluster: " + ec.message());
  }

  // Settings that depend on where the data dir is now (it may have moved).
  if (auto st = WriteFile(pg->cluster_dir_ / "runner.conf",
                          "listen_addresses = ''\n"
                          "unix_socket_directories = " +
                              ConfQuote(pg->socket_dir_.string()) +
                              "\n"
                              "unix_socket_permissions = 0700\n"
                              "port = " +
                              std::to_string(kPort) +
                              "\n"
                              "max_connections = " +
                              std::to_string(options.max_connections) + "\n");
      !st.ok()) {
    return st.error();
  }
  if (as) ::lchown((pg->cluster_dir_ / "runner.conf").c_str(), as->uid, as->gid);

  // A crashed earlier run: its postmaster may still be up (stop it, so this
  // start applies the current settings), or it left a stale postmaster.pid
  // whose pid now belongs to another process (remove it).
  if (auto live = LivePostmaster(pg->cluster_dir_)) {
    spdlog::warn("embedded postgres: a postmaster from an earlier run is up; restarting it pid={}",
                 *live);
    auto r = run({pg_ctl, "-D", pg->cluster_dir_.string(), "-m", "fast", "-w", "-t",
                  std::to_string(options.stop_timeout.count()), "stop"},
                 options.stop_timeout + std::chrono::seconds(5));
    if (!r.ok() || r->exit_code != 0) {
      return Unavailable("a PostgreSQL server from an earlier run (pid " + std::to_string(*live) +
                         ") is still up in " + pg->cluster_dir_.string() +
                         " and did not stop: " + (r.ok() ? Trimmed(r->output) : r.error().message));
    }
  } else if (fs::exists(pg->cluster_dir_ / "postmaster.pid")) {
    spdlog::warn("embedded postgres: removing a stale postmaster.pid from a crashed run dir={}",
                 pg->cluster_dir_.string());
    fs::remove(pg->cluster_dir_ / "postmaster.pid", ec);
    for (const char* f : {".s.PGSQL.5432", ".s.PGSQL.5432.lock"}) {
      fs::remove(pg->socket_dir_ / f, ec);
    }
  }

  spdlog::info("embedded postgres: starting dir={} socket={}", pg->cluster_dir_.string(),
               pg->socket_dir_.string());
  auto r = run({pg_ctl, "-D", pg->cluster_dir_.string(), "-l", pg->log_file_.string(), "-w", "-t",
                std::to_string(options.start_timeout.count()), "start"},
               options.start_timeout + std::chrono::seconds(5));
  if (!r.ok() || r->exit_code != 0) {
    // pg_ctl may have left a server starting: stop it, bounded.
    auto stop =
        run({pg_ctl, "-D", pg->cluster_dir_.string(), "-m", "immediate", "-w", "-t", "10", "stop"},
            std::chrono::seconds(15));
    (void)stop;
    return Unavailable(
        "PostgreSQL did not start (" +
        (r.ok() ? "pg_ctl exit " + std::to_string(r->exit_code) + ": " + Trimmed(r->output)
                : r.error().message) +
        "); last lines of " + pg->log_file_.string() + ":\n" + Tail(pg->log_file_, 15));
  }
  pg->running_ = true;
  pg->version_ = Trimmed(ReadFile(pg->cluster_dir_ / "PG_VERSION"));

  const std::string base = "host=" + pg->socket_dir_.string() + " port=" + std::to_string(kPort) +
                           " user=postgres connect_timeout=10";
  try {
    pqxx::connection admin(base + " dbname=postgres");
    pqxx::nontransaction tx(admin);
    if (tx.exec_params(kDatabaseExists, pg->database_).empty()) {
      tx.exec0("CREATE DATABASE " + tx.quote_name(pg->database_));
      spdlog::info("embedded postgres: created database db={}", pg->database_);
    }
  } catch (const std::exception& e) {
    return Unavailable("the embedded PostgreSQL started but creating database " + pg->database_ +
                       " failed: " + e.what());
  }
  pg->conninfo_ = base + " dbname=" + pg->database_;
  spdlog::info("embedded postgres: ready conninfo=\"{}\"", pg->conninfo_);
  return pg;
}

std::string EmbeddedPostgres::url() const {
  return "postgresql://postgres@" + PercentEncode(socket_dir_.string()) + ":" +
         std::to_string(kPort) + "/" + database_;
}

Status EmbeddedPostgres::Stop() {
  if (!running_) return {};
  running_ = false;
  std::optional<RunAs> as;
  if (run_uid_ >= 0) as = RunAs{static_cast<uid_t>(run_uid_), static_cast<gid_t>(run_gid_)};
  const std::string pg_ctl = (bin_dir_ / "pg_ctl").string();
  spdlog::info("embedded postgres: stopping dir={}", cluster_dir_.string());
  auto r = RunCommand({pg_ctl, "-D", cluster_dir_.string(), "-m", "fast", "-w", "-t",
                       std::to_string(options_.stop_timeout.count()), "stop"},
                      options_.stop_timeout + std::chrono::seconds(5), as);
  if (r.ok() && r->exit_code == 0) return {};
  std::string why = r.ok() ? Trimmed(r->output) : r.error().message;
  spdlog::warn("embedded postgres: fast stop failed, stopping immediately error=\"{}\"", why);
  auto r2 =
      RunCommand({pg_ctl, "-D", cluster_dir_.string(), "-m", "immediate", "-w", "-t", "10", "stop"},
                 std::chrono::seconds(15), as);
  if (r2.ok() && r2->exit_code == 0) return {};
  return Unavailable("could not stop the embedded PostgreSQL in " + cluster_dir_.string() + ": " +
                     why);
}

EmbeddedPostgres::~EmbeddedPostgres() {
  if (auto st = Stop(); !st.ok()) {
    spdlog::error("embedded postgres: {}", st.error().message);
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

}  // namespace runner::embedded
