#pragma once

// Versioned schema migrations of the queue. Each migration runs once, in its
// own transaction, recorded in `schema_migrations`; the whole run holds a
// session advisory lock so two nodes starting at once apply each migration
// exactly once. Running it again is a no-op.
//
// Thread-safety: may be called from any thread; opens its own connection.

#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace runner::queue {

struct Migration {
  int version;
  std::string_view name;
  std::string_view sql;
};

// All migrations, in version order.
const std::vector<Migration>& Migrations();

// Applies the pending migrations. `unavailable` when the database cannot be
// reached, `internal` when a migration fails (the message names it).
Status Migrate(const std::string& conninfo);

// Advisory lock keys of the queue (pg_advisory_lock namespace).
inline constexpr long long kMigrationLockKey = 0x72756e6e65720001LL;  // "runner" + 1
inline constexpr long long kReaperLockKey = 0x72756e6e65720002LL;

// Adds connect_timeout (seconds) to a key=value or URL conninfo that has none.
std::string WithConnectTimeout(const std::string& conninfo, int seconds);

}  // namespace runner::queue
