#pragma once

// How PostgresStore runs a statement (its .cpp files only): Execute borrows a
// pooled connection, runs f on it and maps a database failure to an Error
// (ClassifyDbFailure), running a deadlock or serialization failure again.
//
// Thread-safety: as ConnectionPool (any thread).

#include <chrono>
#include <cstdint>
#include <exception>
#include <string_view>

#include "runner/queue/connection_pool.h"
#include "runner/queue/db_failure.h"

namespace runner::queue::internal {

// Runs f(connection) with a pooled connection, mapping database failures to
// Error values. Deadlocks and serialization failures are retried.
template <class R, class F>
R Execute(ConnectionPool& pool, std::string_view op, F&& f) {
  for (int attempt = 0;; ++attempt) {
    auto borrowed = pool.Acquire();
    if (!borrowed.ok()) return borrowed.error();
    try {
      return f(borrowed->conn());
    } catch (const std::exception&) {
      DbFailure failure = ClassifyDbFailure(std::current_exception(), op);
      if (failure.retryable && attempt < 3) continue;
      if (failure.broken) borrowed->MarkBroken();
      return failure.error;
    }
  }
}

inline int64_t ToMillis(std::chrono::milliseconds d) { return static_cast<int64_t>(d.count()); }

}  // namespace runner::queue::internal
