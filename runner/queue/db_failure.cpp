#include "runner/queue/db_failure.h"

#include <spdlog/spdlog.h>

#include <pqxx/pqxx>
#include <string>

namespace runner::queue {

DbFailure ClassifyDbFailure(const std::exception_ptr& failure, std::string_view op) {
  const std::string what(op);
  try {
    std::rethrow_exception(failure);
  } catch (const pqxx::broken_connection& e) {
    spdlog::warn("database connection lost op={} error=\"{}\"", op, e.what());
    return {Error{"unavailable", "database connection lost during " + what + ": " + e.what()}, true,
            false};
  } catch (const pqxx::in_doubt_error& e) {
    return {
        Error{"unavailable", "database connection lost while committing " + what + ": " + e.what()},
        true, false};
  } catch (const pqxx::sql_error& e) {
    const std::string& state = e.sqlstate();
    if (state == "40P01" || state == "40001") {
      return {Error{"unavailable", "database conflict during " + what + ": " + e.what()}, false,
              true};
    }
    if (state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0) {
      return {Error{"unavailable", "database unavailable during " + what + ": " + e.what()}, true,
              false};
    }
    if (state == "57014" || state == "55P03") {
      return {Error{"unavailable", "database too slow for " + what + ": " + e.what()}, false,
              false};
    }
    spdlog::error("database sql error op={} sqlstate={} error=\"{}\"", op, state, e.what());
    return {Error{"internal", "database error during " + what + ": " + e.what()}, false, false};
  } catch (const pqxx::failure& e) {
    return {Error{"unavailable", "database failure during " + what + ": " + e.what()}, true, false};
  }
}

}  // namespace runner::queue
