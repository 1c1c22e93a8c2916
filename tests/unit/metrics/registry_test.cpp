#include "runner/metrics/registry.h"

#include <catch2/catch.hpp>

using runner::metrics::Registry;

TEST_CASE("metrics render in Prometheus text format with help, type and labels", "[metrics]") {
  Registry r;
  r.GetCounter("runner_claims_total", "Tasks claimed.").Inc(3);
  r.GetGauge("runner_workers", "Workers by state.", {{"state", "idle"}}).Set(2);
  auto& h = r.GetHistogram("runner_claim_seconds", "Claim latency.", {0.001, 0.01});
  h.Observe(0.0005);
  h.Observe(0.005);
  h.Observe(5);
  std::string text = r.Render();
  CHECK_THAT(text, Catch::Contains("# TYPE runner_claims_total counter\nrunner_claims_total 3\n"));
  CHECK_THAT(text, Catch::Contains("runner_workers{state=\"idle\"} 2\n"));
  CHECK_THAT(text, Catch::Contains("runner_claim_seconds_bucket{le=\"0.001\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("runner_claim_seconds_bucket{le=\"0.01\"} 2\n"));
  CHECK_THAT(text, Catch::Contains("runner_claim_seconds_bucket{le=\"+Inf\"} 3\n"));
  CHECK_THAT(text, Catch::Contains("runner_claim_seconds_count 3\n"));
}

TEST_CASE("label values with quotes and newlines are escaped", "[metrics]") {
  Registry r;
  r.GetGauge("g", "h", {{"queue", "a\"b\nc"}}).Set(1);
  CHECK_THAT(r.Render(), Catch::Contains("g{queue=\"a\\\"b\\nc\"} 1"));
}

TEST_CASE("histogram quantiles interpolate within buckets", "[metrics]") {
  runner::metrics::Histogram h({1, 2, 4});
  for (int i = 0; i < 100; ++i) h.Observe(1.5);
  CHECK(h.Quantile(0.5) > 1.0);
  CHECK(h.Quantile(0.5) <= 2.0);
}
