#pragma once

// The store's bounded pool of PostgreSQL connections: at most `size` open,
// each set up at connect (timeouts, plan settings, every prepared statement);
// Acquire waits up to acquire_timeout for one, and a connection that broke
// while borrowed is dropped instead of returned.
//
// Thread-safety: Acquire from any thread; a Borrowed belongs to its caller.

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <pqxx/pqxx>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"
#include "runner/queue/migrations.h"
#include "runner/queue/queue_sql.h"

namespace runner::queue {

class ConnectionPool {
 public:
  ConnectionPool(std::string conninfo, int size, std::chrono::milliseconds acquire_timeout,
                 std::chrono::milliseconds statement_timeout)
      : conninfo_(WithConnectTimeout(conninfo, 5)),
        size_(size),
        acquire_timeout_(acquire_timeout),
        statement_timeout_(statement_timeout) {}

  // A borrowed connection; returned (or dropped when broken) on destruction.
  class Borrowed {
   public:
    Borrowed(ConnectionPool* pool, std::unique_ptr<pqxx::connection> conn)
        : pool_(pool), conn_(std::move(conn)) {}
    Borrowed(Borrowed&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)),
          conn_(std::move(other.conn_)),
          broken_(other.broken_) {}
    Borrowed& operator=(Borrowed&&) = delete;
    Borrowed(const Borrowed&) = delete;
    ~Borrowed() {
      if (pool_ != nullptr) pool_->Return(std::move(conn_), broken_);
    }
    pqxx::connection& conn() { return *conn_; }
    void MarkBroken() { broken_ = true; }

   private:
    ConnectionPool* pool_;
    std::unique_ptr<pqxx::connection> conn_;
    bool broken_ = false;
  };

  Result<Borrowed> Acquire() {
    std::unique_lock lock(mu_);
    bool ready =
        cv_.wait_for(lock, acquire_timeout_, [&] { return !idle_.empty() || open_ < size_; });
    if (!ready) {
      return Error{"unavailable", "all " + std::to_string(size_) +
                                      " database connections stayed busy for " +
                                      std::to_string(acquire_timeout_.count()) + " ms"};
    }
    if (!idle_.empty()) {
      auto conn = std::move(idle_.back());
      idle_.pop_back();
      return Borrowed(this, std::move(conn));
    }
    ++open_;
    lock.unlock();
    try {
      return Borrowed(this, Connect());
    } catch (const pqxx::failure& e) {
      lock.lock();
      --open_;
      cv_.notify_one();
      return Error{"unavailable", std::string("cannot connect to the database: ") + e.what()};
    }
  }

 private:
  std::unique_ptr<pqxx::connection> Connect() {
    auto conn = std::make_unique<pqxx::connection>(conninfo_);
    {
      pqxx::nontransaction tx(*conn);
      tx.exec("SET statement_timeout = " + std::to_string(statement_timeout_.count()) +
              "; SET lock_timeout = " + std::to_string(statement_timeout_.count()) +
              "; SET idle_in_transaction_session_timeout = 60000"
              "; SET application_name = 'runner-queue'; " +
              std::string(sql::kSessionPlanSettings));
    }
    // Prepared at connect, not lazily on first use: a bad statement shows up
    // here rather than in the middle of a claim.
    for (const auto& s : sql::kPrepared) {
      conn->prepare(s.name, std::string(s.text));
      conn->prepare_now(s.name);
    }
    return conn;
  }

  void Return(std::unique_ptr<pqxx::connection> conn, bool broken) {
    std::lock_guard lock(mu_);
    if (broken || !conn || !conn->is_open()) {
      --open_;
    } else {
      idle_.push_back(std::move(conn));
    }
    cv_.notify_one();
  }

  const std::string conninfo_;
  const int size_;
  const std::chrono::milliseconds acquire_timeout_;
  const std::chrono::milliseconds statement_timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;  // guarded by mu_
  int open_ = 0;  // connections existing, idle or lent; guarded by mu_
};

}  // namespace runner::queue
