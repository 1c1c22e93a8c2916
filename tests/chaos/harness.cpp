#include "tests/chaos/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdlib>
#include <fstream>
#include <pqxx/pqxx>
#include <sstream>

#include "isolation/docker/engine_client.h"
#include "tests/support/services.h"

namespace runner::chaos {
namespace json = boost::json;

bool FullMode() {
  const char* v = std::getenv("CHAOS_FULL");
  return v != nullptr && std::string(v) == "1";
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
      port = ntohs(addr.sin_port);
  }
  if (fd >= 0) ::close(fd);
  return port;
}

void RaiseFileLimit(rlim_t want) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  rlim_t target = std::min(want, lim.rlim_max);
  if (lim.rlim_cur < target) {
    lim.rlim_cur = target;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

// --- RunnerProcess -----------------------------------------------------------

RunnerProcess::RunnerProcess(RunnerArgs args, fs::path log_dir, std::string name)
    : args_(std::move(args)), log_dir_(std::move(log_dir)), name_(std::move(name)) {
  log_ = log_dir_ / (name_ + ".log");
}

RunnerProcess::~RunnerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }
}

bool RunnerProcess::Start(std::chrono::milliseconds deadline) {
  if (pid_ > 0) return false;
  port_ = FreePort();
  ++starts_;
  std::vector<std::string> argv = {testing::RunnerBinary(),
                                   "serve",
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(port_),
                                   "--database-url",
                                   args_.database_url,
                                   "--data-dir",
                                   args_.data_dir.string(),
                                   "--workers",
                                   std::to_string(args_.workers),
                                   "--max-workers",
                                   std::to_string(args_.max_workers),
                                   "--mode",
                                   args_.mode,
                                   "--lease",
                                   std::to_string(args_.lease),
                                   "--poll-interval",
                                   std::to_string(args_.poll)};
  if (!args_.docker_host.empty()) {
    argv.push_back("--docker-host");
    argv.push_back(args_.docker_host);
  }
  if (!args_.config_yaml.empty()) {
    fs::path cfg = log_dir_ / (name_ + ".yaml");
    std::ofstream(cfg) << args_.config_yaml;
    argv.push_back("--config");
    argv.push_back(cfg.string());
  }
  for (const auto& e : args_.extra) argv.push_back(e);
  std::error_code ec;
  fs::create_directories(args_.data_dir, ec);
  {
    std::ofstream(log_, std::ios::app) << "\n===== start " << starts_ << " port " << port_ << "\n";
  }
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  std::string log = log_.string();
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    if (::getppid() != parent) ::_exit(126);
    int out = ::open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
    int in = ::open("/dev/null", O_RDONLY);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    if (in >= 0) ::dup2(in, 0);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  if (pid < 0) return false;
  pid_ = pid;
  auto until = Clock::now() + deadline;
  while (Clock::now() < until) {
    if (!Running()) return false;
    if (HttpGet(port_, "/healthz", 1s).status == 200) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

void RunnerProcess::Signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

int RunnerProcess::Wait(std::chrono::milliseconds deadline) {
  if (pid_ <= 0) return 0;
  auto until = Clock::now() + deadline;
  while (true) {
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (Clock::now() >= until) return -1;
    std::this_thread::sleep_for(20ms);
  }
}

bool RunnerProcess::Running() {
  if (pid_ <= 0) return false;
  int st = 0;
  if (::waitpid(pid_, &st, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

std::string RunnerProcess::LogTail(size_t bytes) const {
  std::ifstream in(log_, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (all.size() > bytes) all = all.substr(all.size() - bytes);
  return all;
}

std::pair<int, long> RunnerProcess::ThreadsAndRss() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  int threads = -1;
  long rss = -1;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) threads = std::atoi(line.c_str() + 8);
    if (line.rfind("VmRSS:", 0) == 0) rss = std::atol(line.c_str() + 6);
  }
  return {threads, rss};
}

// --- HTTP ----------------------------------------------------------------------

namespace {
httplib::Client MakeClient(int port, std::chrono::milliseconds timeout) {
  httplib::Client c("127.0.0.1", port);
  auto secs = static_cast<time_t>(timeout.count() / 1000);
  auto usecs = static_cast<time_t>((timeout.count() % 1000) * 1000);
  c.set_connection_timeout(secs, usecs);
  c.set_read_timeout(secs, usecs);
  c.set_write_timeout(secs, usecs);
  return c;
}
}  // namespace

HttpResult HttpGet(int port, const std::string& path, std::chrono::milliseconds timeout) {
  auto t0 = Clock::now();
  auto c = MakeClient(port, timeout);
  HttpResult r;
  if (auto res = c.Get(path.c_str())) {
    r.status = res->status;
    r.body = res->body;
  }
  r.ms = SecondsSince(t0) * 1000;
  return r;
}

HttpResult HttpPost(int port, const std::string& path, const std::string& body,
                    std::chrono::milliseconds timeout) {
  auto t0 = Clock::now();
  auto c = MakeClient(port, timeout);
  HttpResult r;
  if (auto res = c.Post(path.c_str(), body, "application/json")) {
    r.status = res->status;
    r.body = res->body;
  }
  r.ms = SecondsSince(t0) * 1000;
  return r;
}

std::string Submit(int port, const std::string& json_body, std::string* why) {
  for (int i = 0; i < 3; ++i) {
    HttpResult r = HttpPost(port, "/api/v1/tasks", json_body, 10s);
    if (r.status == 201 || r.status == 200) return JsonField(r.body, "id");
    if (why) *why = std::to_string(r.status) + " " + r.body;
    if (r.status >= 400 && r.status < 500) break;
    std::this_thread::sleep_for(100ms);
  }
  return {};
}

std::string JsonField(const std::string& body, const std::string& dotted) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return {};
  const json::value* cur = &v;
  std::stringstream ss(dotted);
  std::string part;
  while (std::getline(ss, part, '.')) {
    if (!cur->is_object()) return {};
    cur = cur->as_object().if_contains(part);
    if (cur == nullptr) return {};
  }
  if (cur->is_string()) return std::string(cur->as_string());
  if (cur->is_null()) return {};
  return json::serialize(*cur);
}

// --- database --------------------------------------------------------------------

long long QueryInt(const std::string& conninfo, const std::string& sql) {
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  auto row = tx.exec1(sql);
  return row[0].is_null() ? 0 : row[0].as<long long>();
}

std::map<std::string, std::string> TaskStates(const std::string& conninfo) {
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  std::map<std::string, std::string> out;
  for (const auto& row : tx.exec("SELECT id, state FROM tasks")) {
    out[row[0].as<std::string>()] = row[1].as<std::string>();
  }
  return out;
}

TaskRow GetTask(const std::string& conninfo, const std::string& id) {
  TaskRow t;
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  auto rows = tx.exec_params(
      "SELECT state, COALESCE(error->>'code', ''), COALESCE(isolation_used, ''), attempt,"
      " logs_truncated,"
      " (SELECT COALESCE(sum(length(l.data)), 0) FROM task_logs l WHERE l.task_id = "
      "tasks.id)::bigint,"
      " COALESCE(extract(epoch FROM finished_at - started_at), 0)::float8"
      " FROM tasks WHERE id = $1",
      id);
  if (rows.empty()) return t;
  t.state = rows[0][0].as<std::string>();
  t.error_code = rows[0][1].as<std::string>();
  t.isolation_used = rows[0][2].as<std::string>();
  t.attempt = rows[0][3].as<int>();
  t.logs_truncated = rows[0][4].as<bool>();
  t.log_bytes = rows[0][5].as<long long>();
  t.run_seconds = rows[0][6].as<double>();
  return t;
}

std::string Invariants::Summary() const {
  std::ostringstream os;
  os << "submitted=" << submitted << " final=" << final_tasks << " lost=" << lost
     << " ended_more_than_once=" << multi_final << " event_overlaps=" << event_overlaps
     << " observed_overlaps=" << observed_overlaps << " states={";
  for (const auto& [k, v] : by_state) os << k << ":" << v << " ";
  os << "}";
  for (const auto& p : problems) os << "\n  " << p;
  return os.str();
}

namespace {
bool IsFinal(const std::string& s) {
  return s == "succeeded" || s == "failed" || s == "cancelled" || s == "timed_out";
}
}  // namespace

Invariants CheckInvariants(const std::string& conninfo, const std::vector<std::string>& ids) {
  Invariants inv;
  inv.submitted = static_cast<int>(ids.size());
  pqxx::connection c(conninfo);
  pqxx::nontransaction tx(c);
  std::map<std::string, std::string> states;
  for (const auto& row : tx.exec("SELECT id, state FROM tasks")) {
    states[row[0].as<std::string>()] = row[1].as<std::string>();
  }
  struct PerTask {
    int finals = 0;
    bool open = false;
    int overlaps = 0;
  };
  std::map<std::string, PerTask> per;
  for (const auto& row :
       tx.exec("SELECT task_id, kind FROM events WHERE task_id IS NOT NULL AND kind IN "
               "('task.started','task.retrying','task.succeeded','task.failed','task.cancelled',"
               "'task.timed_out') ORDER BY id")) {
    PerTask& p = per[row[0].as<std::string>()];
    std::string kind = row[1].as<std::string>();
    if (kind == "task.started") {
      if (p.open) ++p.overlaps;
      p.open = true;
    } else if (kind == "task.retrying") {
      p.open = false;
    } else {
      p.open = false;
      ++p.finals;
    }
  }
  for (const auto& id : ids) {
    auto it = states.find(id);
    if (it == states.end()) {
      ++inv.lost;
      if (inv.problems.size() < 8) inv.problems.push_back(id + " is missing");
      continue;
    }
    ++inv.by_state[it->second];
    if (!IsFinal(it->second)) {
      ++inv.lost;
      if (inv.problems.size() < 8) inv.problems.push_back(id + " ended " + it->second);
      continue;
    }
    ++inv.final_tasks;
    const PerTask& p = per[id];
    if (p.finals != 1) {
      ++inv.multi_final;
      if (inv.problems.size() < 8) {
        inv.problems.push_back(id + " has " + std::to_string(p.finals) + " final events");
      }
    }
    if (p.overlaps > 0) {
      ++inv.event_overlaps;
      if (inv.problems.size() < 8) inv.problems.push_back(id + " started while started");
    }
  }
  return inv;
}

std::string TickCommand(const fs::path& dir, int count, double step) {
  std::ostringstream os;
  os << "i=0; while [ $i -lt " << count << " ]; do echo \"$$ $(date +%s%N)\" >> " << dir.string()
     << "/$CHAOS_KEY; sleep " << step << "; i=$((i+1)); done";
  return os.str();
}

int TickOverlaps(const fs::path& dir, std::vector<std::string>* which) {
  int overlaps = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::ifstream in(entry.path());
    std::map<long, std::pair<long long, long long>> ranges;  // pid -> [first, last]
    long pid = 0;
    long long ns = 0;
    while (in >> pid >> ns) {
      auto it = ranges.find(pid);
      if (it == ranges.end()) {
        ranges[pid] = {ns, ns};
      } else {
        it->second.first = std::min(it->second.first, ns);
        it->second.second = std::max(it->second.second, ns);
      }
    }
    std::vector<std::pair<long long, long long>> v;
    for (const auto& [p, r] : ranges) v.push_back(r);
    std::sort(v.begin(), v.end());
    for (size_t i = 1; i < v.size(); ++i) {
      if (v[i].first < v[i - 1].second) {
        ++overlaps;
        if (which) which->push_back(entry.path().filename().string());
        break;
      }
    }
  }
  return overlaps;
}

// --- Docker ----------------------------------------------------------------------

ContainerSampler::ContainerSampler(std::string docker_host, std::chrono::milliseconds every)
    : host_(std::move(docker_host)), every_(every) {
  thread_ = std::thread([this] { Loop(); });
}

ContainerSampler::~ContainerSampler() { Stop(); }

void ContainerSampler::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::set<std::string> ContainerSampler::overlapping_tasks() const {
  std::lock_guard l(mu_);
  return overlapping_;
}

void ContainerSampler::Loop() {
  isolation::docker::EngineClientOptions o;
  o.docker_host = host_;
  isolation::docker::EngineClient client(o);
  while (!stop_) {
    auto list = client.ContainerList({"io.runner.task"});
    if (list) {
      std::map<std::string, int> running;
      for (const auto& c : *list) {
        if (c.state != "running") continue;
        auto it = c.labels.find("io.runner.task");
        if (it != c.labels.end()) ++running[it->second];
      }
      std::lock_guard l(mu_);
      for (const auto& [task, n] : running) {
        if (n > 1) overlapping_.insert(task);
      }
      ++samples_;
    }
    for (auto slept = 0ms; slept < every_ && !stop_; slept += 20ms)
      std::this_thread::sleep_for(20ms);
  }
}

int ContainersOfNodes(const std::string& docker_host, const std::set<std::string>& nodes,
                      bool running_only) {
  isolation::docker::EngineClientOptions o;
  o.docker_host = docker_host;
  isolation::docker::EngineClient client(o);
  int n = 0;
  for (const auto& node : nodes) {
    auto list = client.ContainerList({"io.runner.node=" + node});
    if (!list) return -1;
    for (const auto& c : *list) {
      if (!running_only || c.state == "running") ++n;
    }
  }
  return n;
}

void RemoveContainersOfNodes(const std::string& docker_host, const std::set<std::string>& nodes) {
  isolation::docker::EngineClientOptions o;
  o.docker_host = docker_host;
  isolation::docker::EngineClient client(o);
  for (const auto& node : nodes) {
    auto list = client.ContainerList({"io.runner.node=" + node});
    if (!list) continue;
    for (const auto& c : *list) {
      if (c.labels.contains("io.runner.task") || c.labels.contains("io.runner.warm")) {
        (void)client.ContainerRemove(c.id, true);
      }
    }
  }
}

std::set<std::string> NodeIds(const std::string& conninfo) {
  std::set<std::string> out;
  try {
    pqxx::connection c(conninfo);
    pqxx::nontransaction tx(c);
    for (const auto& row :
         tx.exec("SELECT id FROM nodes UNION SELECT DISTINCT data->>'node_id' FROM events"
                 " WHERE kind = 'task.started' AND data ? 'node_id'")) {
      if (!row[0].is_null()) out.insert(row[0].as<std::string>());
    }
  } catch (const std::exception&) {
  }
  return out;
}

// --- PrivatePostgres -------------------------------------------------------------

namespace {
std::string PgBin() {
  std::string best;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    std::string b = (e.path() / "bin").string();
    if (fs::exists(b + "/pg_ctl") && b > best) best = b;
  }
  return best;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) {
    if (ch == '\'') {
      out += "'\\''";
    } else {
      out += ch;
    }
  }
  return out + "'";
}

int RunAsPostgres(const std::string& cmd) {
  std::string full = ::geteuid() == 0 ? "su postgres -s /bin/sh -c " + Quote(cmd) : cmd;
  return std::system((full + " >/dev/null 2>&1").c_str());
}
}  // namespace

PrivatePostgres::PrivatePostgres() : bin_(PgBin()) {
  std::string tmpl = (fs::temp_directory_path() / "chaos-pg-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
  fs::create_directories(dir_ / "sock");
  if (::geteuid() == 0) {
    std::system(
        ("chown -R postgres " + Quote(dir_.string()) + " && chmod 755 " + Quote(dir_.string()))
            .c_str());
  }
  if (RunAsPostgres(bin_ + "/initdb -D " + Quote((dir_ / "data").string()) +
                    " -U postgres -A trust --no-sync") != 0) {
    throw std::runtime_error("initdb of the private cluster failed in " + dir_.string());
  }
}

PrivatePostgres::~PrivatePostgres() {
  if (started_) Stop("immediate");
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

bool PrivatePostgres::Start() {
  std::string opts = "-c listen_addresses='' -c unix_socket_directories='" +
                     (dir_ / "sock").string() +
                     "' -c max_connections=200 -c fsync=off -c synchronous_commit=off";
  int rc = RunAsPostgres(bin_ + "/pg_ctl -D " + Quote((dir_ / "data").string()) + " -w -t 60 -l " +
                         Quote((dir_ / "pg.log").string()) + " -o " + Quote(opts) + " start");
  started_ = rc == 0;
  return started_;
}

bool PrivatePostgres::Stop(const std::string& mode) {
  int rc = RunAsPostgres(bin_ + "/pg_ctl -D " + Quote((dir_ / "data").string()) + " -m " + mode +
                         " -w -t 60 stop");
  started_ = false;
  return rc == 0;
}

std::string PrivatePostgres::conninfo(const std::string& db) const {
  return "host=" + (dir_ / "sock").string() + " user=postgres dbname=" + db;
}

std::string PrivatePostgres::url(const std::string& db) const {
  std::string encoded;
  for (char c : (dir_ / "sock").string())
    encoded += c == '/' ? std::string("%2F") : std::string(1, c);
  return "postgresql://postgres@" + encoded + "/" + db;
}

bool PrivatePostgres::CreateDatabase(const std::string& db) {
  try {
    pqxx::connection c(conninfo("postgres"));
    pqxx::nontransaction tx(c);
    tx.exec("CREATE DATABASE " + tx.quote_name(db));
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

void ReportSection(const std::string& file, const std::string& markdown) {
  const char* dir = std::getenv("CHAOS_REPORT_DIR");
  if (dir == nullptr || *dir == 0) return;
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::ofstream(fs::path(dir) / (file + ".md"), std::ios::trunc) << markdown << "\n";
}

}  // namespace runner::chaos
