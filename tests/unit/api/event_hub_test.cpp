#include "api/event_hub.h"

#include <catch2/catch.hpp>

#include "api/sse.h"
#include "app/client/api_client.h"

using runner::api::EventSubscription;
using runner::queue::Event;

namespace {
Event E(int64_t id) {
  Event e;
  e.id = id;
  e.kind = "task.queued";
  return e;
}
}  // namespace

TEST_CASE("a slow subscriber overflows its bounded buffer and is dropped", "[api][sse]") {
  EventSubscription sub(3);
  for (int i = 1; i <= 3; ++i) sub.Push(E(i));
  std::vector<Event> out;
  CHECK(sub.Next(out, std::chrono::milliseconds(0)) == EventSubscription::Wake::kEvents);
  CHECK(out.size() == 3);
  for (int i = 4; i <= 10; ++i) sub.Push(E(i));  // never blocks the publisher
  out.clear();
  CHECK(sub.Next(out, std::chrono::milliseconds(0)) == EventSubscription::Wake::kOverflow);
  CHECK(out.empty());
}

TEST_CASE("a subscriber with nothing to read times out, and a closed one says so", "[api][sse]") {
  EventSubscription sub(3);
  std::vector<Event> out;
  CHECK(sub.Next(out, std::chrono::milliseconds(5)) == EventSubscription::Wake::kTimeout);
  sub.Close();
  CHECK(sub.Next(out, std::chrono::milliseconds(1000)) == EventSubscription::Wake::kClosed);
}

TEST_CASE("SSE framing round-trips through the client's parser", "[api][sse]") {
  std::string wire = runner::api::SseRetry(3000) + runner::api::SseComment("ping") +
                     runner::api::SseEvent(7, "task.queued", "{\"a\":1}") +
                     runner::api::SseEvent(std::nullopt, "end", "line1\nline2");
  std::vector<runner::app::SseMessage> got;
  runner::app::SseParser parser;
  // Feed in awkward pieces, as TCP may deliver them.
  for (std::size_t i = 0; i < wire.size(); i += 5) {
    parser.Feed(std::string_view(wire).substr(i, 5), [&](const runner::app::SseMessage& m) {
      got.push_back(m);
      return true;
    });
  }
  REQUIRE(got.size() == 2);
  CHECK(got[0].id == "7");
  CHECK(got[0].event == "task.queued");
  CHECK(got[0].data == "{\"a\":1}");
  CHECK(got[1].event == "end");
  CHECK(got[1].data == "line1\nline2");
}
