// The task work dir without a tmpfs mount (no privileges needed).

#include "isolation/process/work_dir.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

#include "tests/support/services.h"

namespace runner::isolation::process {
namespace {

namespace fs = std::filesystem;

TEST_CASE("a work dir is private, has tmp/, and is removed with its contents",
          "[process][workdir]") {
  testing::TempDir root;
  fs::path path;
  {
    auto dir = WorkDir::Create(root.path() / "work", "t1-1", 0, false);
    REQUIRE(dir.ok());
    path = (*dir)->path();
    CHECK(path == root.path() / "work" / "t1-1");
    CHECK(fs::is_directory((*dir)->tmp()));
    CHECK((fs::status(path).permissions() & fs::perms::all) == fs::perms::owner_all);
    CHECK_FALSE((*dir)->is_tmpfs());
    fs::create_directories(path / "a" / "b");
    std::ofstream(path / "a" / "b" / "f") << std::string(100000, 'x');
    CHECK((*dir)->UsedBytes() >= 100000);
    CHECK_FALSE((*dir)->Full());
  }
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("a work dir that already exists is reported, not reused", "[process][workdir]") {
  testing::TempDir root;
  auto first = WorkDir::Create(root.path(), "same", 0, false);
  REQUIRE(first.ok());
  auto second = WorkDir::Create(root.path(), "same", 0, false);
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().code == "exists");
  CHECK(fs::exists((*first)->path()));  // the failed attempt did not remove the first one
}

}  // namespace
}  // namespace runner::isolation::process
