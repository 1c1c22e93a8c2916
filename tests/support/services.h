#pragma once

// Access to the real services of the test run (started by scripts/services).
// A test that needs a service it cannot reach fails loudly; it never skips.
//
//   runner::testing::TestDatabase db;          // a fresh, empty database
//   runner::queue::PostgresStore store(db.conninfo(), ...);
//
// Thread-safety: TestDatabase is owned by one test; the free functions are
// safe from any thread.

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

namespace runner::testing {

// Conninfo of the test cluster's `postgres` database. Throws with a message
// naming scripts/services when RUNNER_TEST_PGHOST is not set.
std::string AdminConninfo();

// A fresh database on the test cluster, dropped (WITH FORCE) at destruction.
class TestDatabase {
 public:
  TestDatabase();
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  const std::string& name() const { return name_; }
  const std::string& conninfo() const { return conninfo_; }
  // A postgresql:// URL form of conninfo(), for --database-url.
  std::string url() const;

 private:
  std::string name_;
  std::string conninfo_;
};

// "unix:///var/run/docker.sock" (or RUNNER_TEST_DOCKER_HOST). Throws when the
// daemon does not answer /_ping.
std::string DockerHost();

// A temp directory removed with everything in it at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Polls pred every `step` until it is true or the deadline passes.
bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds deadline,
             std::chrono::milliseconds step = std::chrono::milliseconds(20));

// Path of the built runner binary (RUNNER_BIN, set by scripts/test).
std::string RunnerBinary();

}  // namespace runner::testing
