#include "bench/pool/bench_host.h"

#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

namespace runner::bench {
namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

// Busy CPU seconds of the whole host so far (/proc/stat, all cores).
double HostBusySeconds() {
  std::ifstream stat("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return (user + nice + system + irq + softirq + steal) /
         static_cast<double>(::sysconf(_SC_CLK_TCK));
}

CpuUse CpuNow() {
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  CpuUse u;
  u.host_s = HostBusySeconds();
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.empty() || !std::isdigit(static_cast<unsigned char>(pid[0]))) continue;
    std::ifstream in(entry.path() / "stat");
    std::string line;
    if (!std::getline(in, line)) continue;  // gone meanwhile
    const auto open = line.find('('), close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    const std::string comm = line.substr(open + 1, close - open - 1);
    const bool self = std::stoi(pid) == ::getpid();
    if (!self && comm != "postgres") continue;
    // After ") ": state is field 3; utime, stime, cutime, cstime are 14-17.
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    double t[4] = {0, 0, 0, 0};
    for (int i = 3; i <= 17 && rest >> field; ++i) {
      if (i >= 14) t[i - 14] = std::stod(field);
    }
    const double s = (t[0] + t[1] + t[2] + t[3]) / tick;
    (self ? u.self_s : u.postgres_s) += s;
  }
  return u;
}

// Waits (up to 20 s) until the host is quiet: two 250 ms windows in a row
// with under 25% of its CPU busy. Every burst starts on a quiet host, not in
// the tail of the previous one (the daemon removing the last peer's
// containers, PostgreSQL dropping its database).
void SettleHost() {
  const double cores = std::max(1u, std::thread::hardware_concurrency());
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  int quiet = 0;
  while (quiet < 2 && Clock::now() < deadline) {
    const double a = HostBusySeconds();  // not CpuNow(): no walk of /proc per window
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const double busy = (HostBusySeconds() - a) / (wall * cores);
    quiet = busy < 0.25 ? quiet + 1 : 0;
  }
}

// {"host": ms, "self": ms, "postgres": ms} per task between two snapshots.
json::object CpuMsPerTask(const CpuUse& before, const CpuUse& after, int tasks) {
  const double n = std::max(tasks, 1);
  return json::object{{"host", 1000 * (after.host_s - before.host_s) / n},
                      {"self", 1000 * (after.self_s - before.self_s) / n},
                      {"postgres", 1000 * (after.postgres_s - before.postgres_s) / n}};
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs `command` with /bin/sh, capturing stdout (stderr passes through). The
// command carries its own `timeout`; the pipe is closed on every path.
ShellResult RunShell(const std::string& command) {
  struct PipeCloser {
    void operator()(FILE* f) const { ::pclose(f); }
  };
  ShellResult r;
  const auto t0 = Clock::now();
  std::unique_ptr<FILE, PipeCloser> pipe(::popen(command.c_str(), "r"));
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe.get())) > 0)
    r.output.append(buf.data(), n);
  const int status = ::pclose(pipe.release());
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  return r;
}

int64_t RssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

double CpuSeconds() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

std::string RandomHex(int n) {
  static std::mt19937_64 rng{std::random_device{}()};
  std::string s;
  for (int i = 0; i < n; ++i) s += "0123456789abcdef"[rng() % 16];
  return s;
}

double Ratio(double a, double b) { return b > 0 ? a / b : 0; }

// The last non-empty line of `text`.
std::string LastLine(const std::string& text) {
  auto end = text.find_last_not_of("\n");
  if (end == std::string::npos) return {};
  auto begin = text.rfind('\n', end);
  return text.substr(begin == std::string::npos ? 0 : begin + 1, end + 1 - (begin + 1));
}

}  // namespace runner::bench
