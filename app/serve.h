#pragma once

// `runner serve`: the wiring of one node. Config -> the database (the URL, or a
// private cluster under data_dir) -> the node (pool, workers, pressure
// monitor, reaper) -> the API server -> wait for SIGTERM/SIGINT. The first
// signal drains the pool (up to drain_timeout) while the API keeps answering
// (readyz turns 503); a second signal forces the stop. Then the HTTP server,
// the node and the embedded database stop, in that order.
//
// `runner migrate`: applies the schema to the configured database and exits.
//
// Thread-safety: call from main's thread, once.

#include "runner/config.h"

namespace runner::app {

// Returns the process exit code; problems are printed to stderr.
int RunServe(const Config& config);
int RunMigrate(const Config& config);

}  // namespace runner::app
