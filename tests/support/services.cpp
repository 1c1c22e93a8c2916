#include "tests/support/services.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <pqxx/pqxx>
#include <random>
#include <stdexcept>

namespace runner::testing {
namespace {

std::string Env(const char* name, const std::string& fallback = {}) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 12; ++i) s += hex[rng() % 16];
  return s;
}

}  // namespace

std::string AdminConninfo() {
  std::string host = Env("RUNNER_TEST_PGHOST");
  if (host.empty()) {
    throw std::runtime_error(
        "RUNNER_TEST_PGHOST is not set: run the tests through scripts/test, or "
        "eval \"$(scripts/services start)\" first");
  }
  return "host=" + host + " user=" + Env("RUNNER_TEST_PGUSER", "postgres") + " dbname=postgres";
}

TestDatabase::TestDatabase() : name_("rt_" + RandomSuffix()) {
  pqxx::connection admin(AdminConninfo());
  pqxx::nontransaction tx(admin);
  tx.exec("CREATE DATABASE " + tx.quote_name(name_));
  conninfo_ = "host=" + Env("RUNNER_TEST_PGHOST") +
              " user=" + Env("RUNNER_TEST_PGUSER", "postgres") + " dbname=" + name_;
}

TestDatabase::~TestDatabase() {
  try {
    pqxx::connection admin(AdminConninfo());
    pqxx::nontransaction tx(admin);
    tx.exec("DROP DATABASE IF EXISTS " + tx.quote_name(name_) + " WITH (FORCE)");
  } catch (const std::exception&) {
    // The cluster is torn down with the run; a leftover test database is harmless.
  }
}

std::string TestDatabase::url() const {
  std::string host = Env("RUNNER_TEST_PGHOST");
  std::string encoded;
  for (char c : host) {
    if (c == '/') {
      encoded += "%2F";
    } else {
      encoded += c;
    }
  }
  return "postgresql://" + Env("RUNNER_TEST_PGUSER", "postgres") + "@" + encoded + "/" + name_;
}

std::string DockerHost() {
  std::string host = Env("RUNNER_TEST_DOCKER_HOST", "unix:///var/run/docker.sock");
  std::string path = host.rfind("unix://", 0) == 0 ? host.substr(7) : host;
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
  bool ok = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok) {
    throw std::runtime_error("no Docker daemon answers at " + host +
                             ": run the tests through scripts/test, which starts dockerd");
  }
  return host;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "runner-test-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds deadline,
             std::chrono::milliseconds step) {
  auto until = std::chrono::steady_clock::now() + deadline;
  while (true) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(step);
  }
}

std::string RunnerBinary() {
  std::string bin = Env("RUNNER_BIN");
  if (bin.empty()) throw std::runtime_error("RUNNER_BIN is not set: run through scripts/test");
  return bin;
}

}  // namespace runner::testing
