#pragma once

// Shared set-up of the queue integration tests: a fresh database and a store
// on it.

#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "runner/queue/postgres_store.h"
#include "tests/support/services.h"

namespace runner::queue::testing {

inline std::unique_ptr<PostgresStore> OpenStore(const runner::testing::TestDatabase& db,
                                                StoreOptions options = {}) {
  options.conninfo = db.conninfo();
  auto store = PostgresStore::Open(options);
  if (!store.ok()) throw std::runtime_error("cannot open the store: " + store.error().message);
  return std::move(store.value());
}

inline NewTask Echo(std::string text = "hi") {
  NewTask t;
  t.command = {"sh", "-c", "echo " + text};
  return t;
}

inline ClaimRequest ClaimFor(std::vector<std::string> workers, std::string node = "node-a",
                             std::chrono::milliseconds lease = std::chrono::seconds(30)) {
  ClaimRequest r;
  r.node_id = std::move(node);
  r.worker_ids = std::move(workers);
  r.lease = lease;
  return r;
}

inline FinishReport Report(TaskState state, bool retryable = true) {
  FinishReport r;
  r.state = state;
  r.exit_code = state == TaskState::kSucceeded ? 0 : 1;
  if (state != TaskState::kSucceeded) r.error = TaskError{"nonzero_exit", "exit code 1"};
  r.isolation_used = "process";
  r.retryable = retryable;
  return r;
}

// One value from the test database, for assertions the API does not expose.
inline std::string Scalar(const runner::testing::TestDatabase& db, const std::string& query) {
  pqxx::connection conn(db.conninfo());
  pqxx::nontransaction tx(conn);
  auto r = tx.exec(query);
  return r[0][0].is_null() ? "" : r[0][0].as<std::string>();
}

}  // namespace runner::queue::testing
