// PostgresStore's membership (nodes and workers), event log and recovery
// (the reaper's pass): the roles MembershipStore, EventLog and RecoveryStore
// of queue_store.h. Tasks and leases are in postgres_store.cpp.

#include <spdlog/spdlog.h>

#include <pqxx/pqxx>
#include <set>
#include <string>
#include <vector>

#include "runner/queue/migrations.h"
#include "runner/queue/postgres_store.h"
#include "runner/queue/queue_sql.h"
#include "runner/queue/store_execute.h"
#include "runner/queue/task_rows.h"

namespace runner::queue {
using namespace rows;  // NOLINT: the row mapping is this file's vocabulary
using internal::Execute;
using internal::ToMillis;

// --- nodes and workers ---------------------------------------------------------

Status PostgresStore::RegisterNode(const NodeInfo& node) {
  return Execute<Status>(*connections_, "register_node", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    tx.exec_prepared(sql::kUpsertNode.name, node.id, node.host, node.pid, node.mode, node.target);
    return {};
  });
}

Status PostgresStore::DeregisterNode(std::string_view node_id) {
  return Execute<Status>(*connections_, "deregister_node", [&](pqxx::connection& c) -> Status {
    pqxx::work tx(c);
    tx.exec_prepared(sql::kDeleteNodeWorkers.name, std::string(node_id));
    tx.exec_prepared(sql::kDeleteNode.name, std::string(node_id));
    tx.commit();
    return {};
  });
}

Status PostgresStore::RegisterWorker(const WorkerInfo& worker) {
  return Execute<Status>(*connections_, "register_worker", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    tx.exec_prepared(sql::kUpsertWorker.name, worker.id, worker.node_id,
                     std::string(WorkerStateText(worker.state)), NullableCStr(worker.task_id));
    return {};
  });
}

Status PostgresStore::RemoveWorker(std::string_view worker_id) {
  return Execute<Status>(*connections_, "remove_worker", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    tx.exec_prepared(sql::kDeleteWorker.name, std::string(worker_id));
    return {};
  });
}

Result<std::vector<WorkerInfo>> PostgresStore::ListWorkers() {
  using R = Result<std::vector<WorkerInfo>>;
  return Execute<R>(*connections_, "list_workers", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    std::vector<WorkerInfo> out;
    for (const auto& row : tx.exec_prepared(sql::kListWorkers.name)) {
      WorkerInfo w;
      w.id = row[0].as<std::string>();
      w.node_id = row[1].as<std::string>();
      w.state = ParseWorkerState(row[2].c_str());
      w.task_id = OptString(row[3]);
      w.started_at = Micros(row[4]);
      w.heartbeat_at = Micros(row[5]);
      out.push_back(std::move(w));
    }
    return out;
  });
}

Result<std::vector<NodeInfo>> PostgresStore::ListNodes() {
  using R = Result<std::vector<NodeInfo>>;
  return Execute<R>(*connections_, "list_nodes", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    std::vector<NodeInfo> out;
    for (const auto& row : tx.exec_prepared(sql::kListNodes.name)) {
      NodeInfo n;
      n.id = row[0].as<std::string>();
      n.host = row[1].as<std::string>();
      n.pid = row[2].as<int64_t>();
      n.mode = row[3].as<std::string>();
      n.target = row[4].as<int>();
      n.heartbeat_at = Micros(row[5]);
      out.push_back(std::move(n));
    }
    return out;
  });
}

Result<std::vector<std::string>> PostgresStore::DeadNodeIds(std::chrono::milliseconds dead_after) {
  using R = Result<std::vector<std::string>>;
  return Execute<R>(*connections_, "dead_nodes", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    std::vector<std::string> out;
    for (const auto& row : tx.exec_prepared(sql::kDeadNodes.name, ToMillis(dead_after))) {
      out.push_back(row[0].as<std::string>());
    }
    return out;
  });
}

// --- events ----------------------------------------------------------------------

Status PostgresStore::Emit(const NewEvent& event) {
  return Execute<Status>(*connections_, "emit", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    tx.exec_prepared(sql::kInsertEvent.name, event.kind, NullableCStr(event.task_id),
                     NullableCStr(event.worker_id), event.data_json);
    return {};
  });
}

Result<std::vector<Event>> PostgresStore::EventsAfter(int64_t after_id, std::size_t limit) {
  using R = Result<std::vector<Event>>;
  return Execute<R>(*connections_, "events_after", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    std::vector<Event> out;
    auto r = tx.exec_prepared(sql::kEventsAfter.name, after_id,
                              static_cast<int64_t>(std::min<std::size_t>(limit, 10000)));
    for (const auto& row : r) {
      Event e;
      e.id = row[0].as<int64_t>();
      e.at = Micros(row[1]);
      e.kind = row[2].as<std::string>();
      e.task_id = OptString(row[3]);
      e.worker_id = OptString(row[4]);
      e.data_json = row[5].as<std::string>();
      out.push_back(std::move(e));
    }
    return out;
  });
}

// --- recovery ----------------------------------------------------------------------

Result<ReapReport> PostgresStore::Reap(const ReapPolicy& policy) {
  using R = Result<ReapReport>;
  return Execute<R>(*connections_, "reap", [&](pqxx::connection& c) -> R {
    pqxx::work tx(c);
    ReapReport report;
    // Transaction-scoped: released at commit or rollback, even if we crash.
    auto lock = tx.exec_prepared(sql::kTryReaperLock.name, kReaperLockKey);
    if (!lock[0][0].as<bool>()) return report;
    report.ran = true;
    std::set<std::string> queues;
    std::vector<std::string> failed;
    for (const auto& row : tx.exec_prepared(sql::kReapExpired.name)) {
      std::string kind = row[0].as<std::string>();
      if (kind == "requeued") {
        ++report.requeued;
        queues.insert(row[2].as<std::string>());
      } else {
        ++report.failed_lease_lost;
        failed.push_back(row[1].as<std::string>());
      }
    }
    for (const auto& id : failed) tx.exec_prepared(sql::kFailDependents.name, id, "lease_lost");
    for (const auto& row : tx.exec_prepared(sql::kOrphanedDependents.name)) {
      tx.exec_prepared(sql::kFailDependents.name, row[0].as<std::string>(),
                       row[1].as<std::string>());
    }
    for (const auto& q : queues) tx.exec_prepared(sql::kNotifyTasks.name, q);
    int64_t dead_ms = ToMillis(policy.node_dead_after);
    report.dead_workers =
        static_cast<int>(tx.exec_prepared(sql::kReapWorkers.name, dead_ms).affected_rows());
    report.dead_nodes =
        static_cast<int>(tx.exec_prepared(sql::kReapNodes.name, dead_ms).affected_rows());
    int64_t event_s = static_cast<int64_t>(policy.event_retention.count());
    tx.exec_prepared(sql::kForgetDeadNodes.name, event_s);
    report.deleted_tasks =
        static_cast<int>(tx.exec_prepared(sql::kDeleteOldTasks.name,
                                          static_cast<int64_t>(policy.finished_retention.count()))
                             .affected_rows());
    report.deleted_events =
        static_cast<int>(tx.exec_prepared(sql::kDeleteOldEvents.name, event_s).affected_rows());
    tx.commit();
    if (report.requeued + report.failed_lease_lost + report.dead_nodes > 0) {
      spdlog::info("queue reaped requeued={} failed_lease_lost={} dead_workers={} dead_nodes={}",
                   report.requeued, report.failed_lease_lost, report.dead_workers,
                   report.dead_nodes);
    }
    return report;
  });
}

}  // namespace runner::queue
