#pragma once

// The pool benchmark's host-side helpers: CPU use of the host, this process
// and PostgreSQL; running shell commands (the peers); small text helpers.
//
// Thread-safety: every function may be called from any thread.

#include <boost/json.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace runner::bench {

namespace json = boost::json;

// The environment variable `name`, or `fallback` when unset.
std::string Env(const char* name, const std::string& fallback = {});

// CPU spent during a burst, from /proc: the whole host (all cores; user,
// system, irq, softirq, steal), this process (the node or the peer loop) and
// PostgreSQL (every live `postgres` process with its reaped children). On a
// host the Docker daemon saturates, what the runner adds per task shows here
// before it shows in tasks/s.
struct CpuUse {
  double host_s = 0, self_s = 0, postgres_s = 0;
};

// Busy CPU seconds of the whole host so far (/proc/stat, all cores).
double HostBusySeconds();

// The CPU used so far by the host, this process and PostgreSQL.
CpuUse CpuNow();

// Waits (up to 20 s) until the host is quiet: two 250 ms windows in a row
// with under 25% of its CPU busy. Every burst starts on a quiet host, not in
// the tail of the previous one (the daemon removing the last peer's
// containers, PostgreSQL dropping its database).
void SettleHost();

// {"host": ms, "self": ms, "postgres": ms} per task between two snapshots.
json::object CpuMsPerTask(const CpuUse& before, const CpuUse& after, int tasks);

// `s` in single quotes for /bin/sh.
std::string ShellQuote(const std::string& s);

struct ShellResult {
  int exit_code = -1;  // -1: did not run or was killed by a signal
  std::string output;  // stdout
  double seconds = 0;  // wall time, start to exit
};

// Runs `command` with /bin/sh, capturing stdout (stderr passes through). The
// command carries its own `timeout`; the pipe is closed on every path.
ShellResult RunShell(const std::string& command);

// This process's resident memory, and its CPU seconds (user + system).
int64_t RssBytes();

double CpuSeconds();

// The non-empty parts of a comma-separated list.
std::vector<std::string> Split(const std::string& s);

// `n` random hex digits.
std::string RandomHex(int n);

// a / b, or 0 when b is not positive.
double Ratio(double a, double b);

// The last non-empty line of `text`.
std::string LastLine(const std::string& text);

}  // namespace runner::bench
