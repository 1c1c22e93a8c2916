// How a database exception becomes an Error, for both stores.

#include "runner/queue/db_failure.h"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <stdexcept>

using runner::queue::ClassifyDbFailure;
using runner::queue::DbFailure;

namespace {

template <class E>
DbFailure Classify(const E& e) {
  return ClassifyDbFailure(std::make_exception_ptr(e), "claim");
}

}  // namespace

TEST_CASE("database failures map to what the caller must do", "[queue][db]") {
  SECTION("a deadlock or serialization failure may run again, on the same connection") {
    for (const char* state : {"40P01", "40001"}) {
      auto f = Classify(pqxx::sql_error("deadlock detected", "SELECT 1", state));
      CHECK(f.retryable);
      CHECK_FALSE(f.broken);
      CHECK(f.error.code == "unavailable");
    }
  }
  SECTION("a lost connection or a server going down drops the connection") {
    auto lost = Classify(pqxx::broken_connection("server closed the connection"));
    CHECK(lost.broken);
    CHECK(lost.error.code == "unavailable");
    CHECK(lost.error.message.find("during claim") != std::string::npos);
    for (const char* state : {"08006", "57P01"}) {
      auto f = Classify(pqxx::sql_error("terminating connection", "", state));
      CHECK(f.broken);
      CHECK_FALSE(f.retryable);
      CHECK(f.error.code == "unavailable");
    }
  }
  SECTION("a statement or lock timeout is unavailable, and the connection stays") {
    for (const char* state : {"57014", "55P03"}) {
      auto f = Classify(pqxx::sql_error("canceling statement due to statement timeout", "", state));
      CHECK_FALSE(f.broken);
      CHECK(f.error.code == "unavailable");
      CHECK(f.error.message.find("too slow for claim") != std::string::npos);
    }
  }
  SECTION("an SQL error of ours is internal, with the database's words") {
    auto f = Classify(pqxx::sql_error("relation \"taks\" does not exist", "", "42P01"));
    CHECK(f.error.code == "internal");
    CHECK(f.error.message.find("relation \"taks\" does not exist") != std::string::npos);
    CHECK_FALSE(f.broken);
    CHECK_FALSE(f.retryable);
  }
  SECTION("what is not a database failure is not swallowed") {
    CHECK_THROWS_AS(Classify(std::logic_error("a bug")), std::logic_error);
  }
}
