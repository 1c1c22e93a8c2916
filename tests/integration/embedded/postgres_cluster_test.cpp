#include "runner/embedded/postgres_cluster.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <pqxx/pqxx>

#include "tests/support/services.h"

namespace fs = std::filesystem;
using runner::embedded::EmbeddedPostgres;
using runner::testing::TempDir;

namespace {

// The postmaster's pid while the cluster runs (postmaster.pid's first line).
pid_t PostmasterPid(const EmbeddedPostgres& pg) {
  std::ifstream in(pg.cluster_dir() / "postmaster.pid");
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

bool Alive(pid_t pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

std::string ReadValue(const std::string& conninfo) {
  pqxx::connection c(conninfo);
  pqxx::work tx(c);
  return tx.exec1("SELECT v FROM kept").front().as<std::string>();
}

}  // namespace

TEST_CASE("the embedded cluster keeps its data across a stop and a start", "[embedded]") {
  TempDir dir;
  pid_t first_pid = 0;
  {
    auto pg = EmbeddedPostgres::Start(dir.path());
    REQUIRE(pg.ok());
    first_pid = PostmasterPid(**pg);
    CHECK(Alive(first_pid));
    CHECK(fs::exists(dir.path() / "postgres" / "data" / "PG_VERSION"));
    pqxx::connection c((*pg)->conninfo());
    CHECK(c.dbname() == std::string("runner"));
    pqxx::work tx(c);
    tx.exec0("CREATE TABLE kept (v text)");
    tx.exec0("INSERT INTO kept VALUES ('still here')");
    tx.commit();
  }
  // Destroyed: the server is gone, not left behind.
  CHECK(runner::testing::WaitFor([&] { return !Alive(first_pid); }, std::chrono::seconds(10)));
  CHECK_FALSE(fs::exists(dir.path() / "postgres" / "data" / "postmaster.pid"));

  auto again = EmbeddedPostgres::Start(dir.path());
  REQUIRE(again.ok());
  CHECK(ReadValue((*again)->conninfo()) == "still here");
}

TEST_CASE("the cluster listens on a unix socket in the data dir and on no TCP port", "[embedded]") {
  TempDir dir;
  auto pg = EmbeddedPostgres::Start(dir.path());
  REQUIRE(pg.ok());
  CHECK(fs::exists((*pg)->socket_dir() / ".s.PGSQL.5432"));
  CHECK((*pg)->socket_dir().string().rfind(dir.path().string(), 0) == 0);
  pqxx::connection c((*pg)->conninfo());
  pqxx::work tx(c);
  CHECK(tx.exec1("SHOW listen_addresses").front().as<std::string>().empty());
  // The URL form reaches the same database.
  pqxx::connection by_url((*pg)->url());
  CHECK(by_url.dbname() == std::string("runner"));
}

TEST_CASE("missing server binaries give a message that says how to install them", "[embedded]") {
  TempDir dir;
  TempDir empty_bin;
  EmbeddedPostgres::Options options;
  options.bin_dir = empty_bin.path();
  auto pg = EmbeddedPostgres::Start(dir.path(), options);
  REQUIRE_FALSE(pg.ok());
  CHECK_THAT(pg.error().message, Catch::Contains("PostgreSQL server binaries not found") &&
                                     Catch::Contains("apt-get install postgresql"));
}

TEST_CASE("a second runner on the same data dir is refused while the first owns it", "[embedded]") {
  TempDir dir;
  auto first = EmbeddedPostgres::Start(dir.path());
  REQUIRE(first.ok());
  auto second = EmbeddedPostgres::Start(dir.path());
  REQUIRE_FALSE(second.ok());
  CHECK_THAT(second.error().message, Catch::Contains("in use by another runner"));
  // The first one is untouched.
  pqxx::connection c((*first)->conninfo());
  CHECK(c.is_open());
}

TEST_CASE("a stale postmaster.pid left by a crashed run does not stop the next start",
          "[embedded]") {
  TempDir dir;
  {
    auto pg = EmbeddedPostgres::Start(dir.path());
    REQUIRE(pg.ok());
  }
  // A crash leaves postmaster.pid behind, and its pid may now be another
  // process: this test's own.
  {
    std::ofstream pid_file(dir.path() / "postgres" / "data" / "postmaster.pid");
    pid_file << ::getpid() << "\n" << (dir.path() / "postgres" / "data").string() << "\n";
  }
  auto pg = EmbeddedPostgres::Start(dir.path());
  REQUIRE(pg.ok());
  pqxx::connection c((*pg)->conninfo());
  CHECK(c.is_open());
}

TEST_CASE("a postmaster left running by a killed runner is taken over on the next start",
          "[embedded]") {
  TempDir dir;
  // A child process starts the cluster and dies without running destructors,
  // as a runner killed with SIGKILL would.
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto pg = EmbeddedPostgres::Start(dir.path());
    ::_exit(pg.ok() ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  std::ifstream in(dir.path() / "postgres" / "data" / "postmaster.pid");
  long orphan = 0;
  in >> orphan;
  REQUIRE(Alive(static_cast<pid_t>(orphan)));

  {
    auto pg = EmbeddedPostgres::Start(dir.path());
    REQUIRE(pg.ok());
    pqxx::connection c((*pg)->conninfo());
    CHECK(c.is_open());
    CHECK(PostmasterPid(**pg) != orphan);
  }
  CHECK(runner::testing::WaitFor([&] { return !Alive(static_cast<pid_t>(orphan)); },
                                 std::chrono::seconds(10)));
}

TEST_CASE("as root, a data dir the postgres user cannot reach is refused with the fix",
          "[embedded]") {
  TempDir parent;  // mkdtemp: 0700, exists before the start, so it is the operator's
  auto pg = EmbeddedPostgres::Start(parent.path() / "var");
  if (::geteuid() == 0) {
    REQUIRE_FALSE(pg.ok());
    CHECK_THAT(pg.error().message,
               Catch::Contains(parent.path().string()) && Catch::Contains("chmod o+x"));
  } else {
    // Not root: the server runs as us and reaches our own dirs.
    REQUIRE(pg.ok());
  }
}
