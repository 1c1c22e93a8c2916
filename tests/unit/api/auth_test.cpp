#include "api/auth.h"

#include <catch2/catch.hpp>

using namespace runner::api;

TEST_CASE("tokens compare equal only when identical", "[api][auth]") {
  CHECK(ConstantTimeEquals("secret", "secret"));
  CHECK_FALSE(ConstantTimeEquals("secret", "secreT"));
  CHECK_FALSE(ConstantTimeEquals("secret", "secret2"));
  CHECK_FALSE(ConstantTimeEquals("", "x"));
  CHECK(ConstantTimeEquals("", ""));
}

TEST_CASE("the bearer header must carry the exact token", "[api][auth]") {
  CHECK(BearerMatches("Bearer abc", "abc"));
  CHECK(BearerMatches("bearer abc", "abc"));
  CHECK_FALSE(BearerMatches("Bearer abd", "abc"));
  CHECK_FALSE(BearerMatches("Basic abc", "abc"));
  CHECK_FALSE(BearerMatches("", "abc"));
  CHECK_FALSE(BearerMatches("Bearer ", ""));
}

TEST_CASE("listen addresses are parsed and loopback is recognised", "[api][auth]") {
  auto a = ParseListen("127.0.0.1:8080");
  REQUIRE(a.ok());
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 8080);
  auto v6 = ParseListen("[::1]:0");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");
  CHECK(ParseListen(":9000")->host == "0.0.0.0");
  CHECK_FALSE(ParseListen("localhost").ok());
  CHECK_FALSE(ParseListen("host:99999").ok());
  CHECK(IsLoopback("127.0.0.1"));
  CHECK(IsLoopback("127.1.2.3"));
  CHECK(IsLoopback("::1"));
  CHECK(IsLoopback("localhost"));
  CHECK_FALSE(IsLoopback("0.0.0.0"));
  CHECK_FALSE(IsLoopback("10.0.0.1"));
  CHECK_FALSE(IsLoopback("::"));
}
