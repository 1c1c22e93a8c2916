#pragma once

// What a libpqxx exception means for whoever ran the statement: the error to
// report (unavailable for a lost, failing or too slow database; internal for
// an SQL error of ours), whether the connection is unusable now, and whether
// the statement may simply run again (a deadlock or serialization failure).
// The queue store (one pooled connection per call) and the schedule store
// (one connection of its own) both map failures through it.
//
// Thread-safety: a pure function.

#include <exception>
#include <string_view>

#include "base/result.h"

namespace runner::queue {

struct DbFailure {
  Error error;
  bool broken = false;     // drop the connection: a new one is needed
  bool retryable = false;  // 40P01, 40001: the same statement may succeed on a retry
};

// `failure` is a caught exception (std::current_exception()); `op` names the
// operation in the message. Anything that is not a pqxx::failure is rethrown.
DbFailure ClassifyDbFailure(const std::exception_ptr& failure, std::string_view op);

}  // namespace runner::queue
