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

namespace runner::isolation::process {
namespace {

TEST_CASE("a work root clears what a crashed run left behind", "[process][workdir]") {
  testing::TempDir root;
  fs::create_directories(root.path() / "old-task-1" / "tmp");
  std::ofstream(root.path() / "old-task-1" / "file") << "x";
  WorkRoot work(root.path());
  CHECK_FALSE(fs::exists(root.path() / "old-task-1"));
  CHECK(fs::is_directory(root.path() / ".spare"));
}

TEST_CASE("a work root recycles emptied dirs and never hands out old contents",
          "[process][workdir]") {
  testing::TempDir root;
  WorkRoot work(root.path(), 2);
  fs::path first_path;
  {
    auto dir = work.Acquire("a-1", 0, false);
    REQUIRE(dir.ok());
    first_path = (*dir)->path();
    fs::create_directories(first_path / "x" / "y");
    std::ofstream((*dir)->tmp() / "t") << "secret";
    fs::create_directory_symlink("/", first_path / "link");
    fs::permissions(first_path, fs::perms::all);
  }
  CHECK_FALSE(fs::exists(first_path));
  CHECK(work.spares() == 1);
  auto again = work.Acquire("b-1", 0, false);
  REQUIRE(again.ok());
  CHECK(work.spares() == 0);
  std::vector<std::string> entries;
  for (const auto& e : fs::directory_iterator((*again)->path())) {
    entries.push_back(e.path().filename().string());
  }
  CHECK(entries == std::vector<std::string>{"tmp"});
  CHECK(fs::is_empty((*again)->tmp()));
  CHECK((fs::status((*again)->path()).permissions() & fs::perms::all) == fs::perms::owner_all);
  CHECK(fs::exists("/etc"));  // the planted link was removed, not followed
}

TEST_CASE("a work root keeps at most max_spares spare dirs", "[process][workdir]") {
  testing::TempDir root;
  WorkRoot work(root.path(), 2);
  {
    std::vector<std::unique_ptr<WorkDir>> dirs;
    for (int i = 0; i < 4; ++i) {
      auto d = work.Acquire("t-" + std::to_string(i), 0, false);
      REQUIRE(d.ok());
      dirs.push_back(std::move(d).value());
    }
  }
  CHECK(work.spares() == 2);
  size_t left = 0;
  for (const auto& e : fs::directory_iterator(root.path())) {
    (void)e;
    ++left;
  }
  CHECK(left == 1);  // only .spare
  auto taken = work.Acquire("t-0", 0, false);
  REQUIRE(taken.ok());
  auto clash = work.Acquire("t-0", 0, false);
  REQUIRE_FALSE(clash.ok());
  CHECK(clash.error().code == "exists");
  CHECK(work.spares() == 1);  // the clash put its spare back
}

}  // namespace
}  // namespace runner::isolation::process
