#include "runner/queue/notify_listener.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <pqxx/pqxx>
#include <vector>

#include "runner/queue/migrations.h"

namespace runner::queue {
namespace {

class Receiver final : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& conn, std::string_view channel,
           const NotifyListener::Callback& callback)
      : pqxx::notification_receiver(conn, std::string(channel)), callback_(callback) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    callback_(channel(), payload);
  }

 private:
  const NotifyListener::Callback& callback_;
};

}  // namespace

NotifyListener::NotifyListener(std::string conninfo, Callback callback)
    : NotifyListener(std::move(conninfo), std::move(callback), Options{}) {}

NotifyListener::NotifyListener(std::string conninfo, Callback callback, Options options)
    : conninfo_(WithConnectTimeout(conninfo, 3)),
      callback_(std::move(callback)),
      options_(options),
      thread_([this](std::stop_token stop) { Run(stop); }) {}

NotifyListener::~NotifyListener() { Stop(); }

void NotifyListener::Stop() {
  if (!thread_.joinable()) return;
  thread_.request_stop();
  cv_.notify_all();
  thread_.join();
}

void NotifyListener::Sleep(std::stop_token stop, std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, stop, d, [] { return false; });
}

void NotifyListener::Run(std::stop_token stop) {
  auto backoff = options_.backoff_min;
  while (!stop.stop_requested()) {
    try {
      pqxx::connection conn(conninfo_);
      Receiver tasks(conn, kTasksChannel, callback_);
      Receiver cancels(conn, kCancelChannel, callback_);
      {
        pqxx::nontransaction tx(conn);
        tx.exec("SET application_name = 'runner-listener'");
      }
      conn.get_notifs();  // LISTENs are issued by the receivers' constructors
      connected_ = true;
      ++connects_;
      backoff = options_.backoff_min;
      spdlog::info("queue listener connected channels={},{}", kTasksChannel, kCancelChannel);
      callback_(kTasksChannel, "");
      auto last_activity = std::chrono::steady_clock::now();
      while (!stop.stop_requested()) {
        auto slice = std::chrono::duration_cast<std::chrono::microseconds>(options_.wait_slice);
        int n = conn.await_notification(static_cast<long>(slice.count() / 1000000),
                                        static_cast<long>(slice.count() % 1000000));
        auto now = std::chrono::steady_clock::now();
        if (n > 0) {
          last_activity = now;
        } else if (now - last_activity > options_.liveness_check) {
          // A silent, half-open connection would never wake select(): probe it.
          pqxx::nontransaction probe(conn);
          probe.exec("SELECT 1");
          last_activity = now;
        }
      }
    } catch (const pqxx::failure& e) {
      if (connected_.exchange(false)) {
        spdlog::warn("queue listener lost its connection, reconnecting error=\"{}\"", e.what());
      } else {
        spdlog::debug("queue listener cannot connect error=\"{}\"", e.what());
      }
    }
    connected_ = false;
    if (stop.stop_requested()) break;
    Sleep(stop, backoff);
    backoff = std::min(options_.backoff_max, backoff * 2);
  }
  connected_ = false;
}

}  // namespace runner::queue
