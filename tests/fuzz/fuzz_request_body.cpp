// libFuzzer harness over the API's request-body parsing and validation
// (api/task_json.h): whatever bytes arrive, parsing returns a value or an
// error, never crashes, hangs or accepts something out of range.
//
//   tests/fuzz/run_fuzz.sh <source dir> <work dir> [seconds]
#include <boost/json/src.hpp>  // header-only Boost.JSON, so it is instrumented too
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/task_json.h"
#include "runner/queue/validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto task = runner::api::ParseNewTask(body);
  if (task.ok()) {
    const auto& t = *task;
    if (t.command.empty() || t.max_attempts < 1 || t.max_attempts > runner::queue::kMaxAttempts ||
        t.limits.cpus < 0 || t.limits.memory < 0 || t.limits.disk < 0 || t.limits.pids < 0 ||
        t.delay < 0 || (t.timeout && *t.timeout < 0) || t.queue.empty()) {
      std::abort();  // validation let an out-of-range value through
    }
    // What the server would send back must serialise.
    runner::queue::Task out;
    out.command = t.command;
    out.env = t.env;
    out.labels = t.labels;
    out.limits = t.limits;
    out.depends_on = t.depends_on;
    out.idempotency_key = t.idempotency_key;
    (void)boost::json::serialize(runner::api::TaskToJson(out));
  } else if (task.error().code != "bad_request" && task.error().code != "validation_failed") {
    std::abort();
  }
  (void)runner::api::ParseScaleRequest(body);
  (void)runner::api::ParseStopRequest(body);
  return 0;
}
