#include "base/ulid.h"

#include <catch2/catch.hpp>
#include <set>

TEST_CASE("ULIDs are 26 Crockford characters and increase within a millisecond", "[ulid]") {
  auto now = std::chrono::system_clock::now();
  std::string prev = runner::NewUlid(now);
  std::set<std::string> seen{prev};
  for (int i = 0; i < 1000; ++i) {
    std::string id = runner::NewUlid(now);
    REQUIRE(runner::IsUlid(id));
    REQUIRE(id > prev);
    seen.insert(id);
    prev = id;
  }
  CHECK(seen.size() == 1001);
  CHECK_FALSE(runner::IsUlid("not-a-ulid"));
}
