// PostgresStore's QueuePolicyStore: the policy rows, the queue listing and the
// rate limit's next opening. The claim itself is in queue_sql.h and
// queue_policy_schema.h.

#include <boost/json.hpp>
#include <cmath>
#include <pqxx/pqxx>
#include <string>

#include "runner/queue/postgres_store.h"
#include "runner/queue/queue_policy.h"
#include "runner/queue/queue_policy_schema.h"
#include "runner/queue/validation.h"

namespace runner::queue {
namespace {

namespace json = boost::json;

constexpr int kMaxCap = 1000000;

// clang-format off
// $1 queue. One row per queue: name, queued, running, groups, the policy
// columns (NULL when there is none), starts in the rate window, policy exists.
#define RUNNER_QUEUE_ROW(names)                                                               \
  "SELECT n.queue,"                                                                           \
  "  (SELECT count(*) FROM tasks t WHERE t.state = 'queued' AND t.queue = n.queue),"          \
  "  (SELECT count(*) FROM tasks t WHERE t.state = 'running' AND t.queue = n.queue),"         \
  "  (SELECT count(DISTINCT coalesce(t.\"group\", '')) FROM tasks t"                          \
  "     WHERE t.state IN ('queued', 'running') AND t.queue = n.queue),"                       \
  "  p.max_running, p.max_running_per_group, p.rate_count, p.rate_per, p.paused,"             \
  "  (SELECT count(*) FROM queue_rate_slots s WHERE s.queue = n.queue"                        \
  "     AND s.at > clock_timestamp() - p.rate_per * interval '1 second'),"                    \
  "  p.queue IS NOT NULL"                                                                     \
  " FROM (" names ") n LEFT JOIN queue_policies p ON p.queue = n.queue ORDER BY n.queue"
// clang-format on

constexpr std::string_view kQueueRow = RUNNER_QUEUE_ROW("SELECT $1::text AS queue");

// Every queue with a policy or a queued or running task; the distinct queues
// of the live tasks by a skip scan of their indexes, not a walk of the backlog.
constexpr std::string_view kQueueRows = RUNNER_QUEUE_ROW(
    "WITH RECURSIVE qd(queue) AS ("
    "  (SELECT t.queue FROM tasks t WHERE t.state = 'queued' ORDER BY t.queue LIMIT 1)"
    "  UNION ALL SELECT (SELECT t.queue FROM tasks t WHERE t.state = 'queued'"
    "    AND t.queue > qd.queue ORDER BY t.queue LIMIT 1) FROM qd WHERE qd.queue IS NOT NULL"
    "), rd(queue) AS ("
    "  (SELECT t.queue FROM tasks t WHERE t.state = 'running' ORDER BY t.queue LIMIT 1)"
    "  UNION ALL SELECT (SELECT t.queue FROM tasks t WHERE t.state = 'running'"
    "    AND t.queue > rd.queue ORDER BY t.queue LIMIT 1) FROM rd WHERE rd.queue IS NOT NULL"
    ") SELECT queue FROM qd WHERE queue IS NOT NULL"
    "  UNION SELECT queue FROM rd WHERE queue IS NOT NULL"
    "  UNION SELECT queue FROM queue_policies");

constexpr std::string_view kLockPolicy =
    "SELECT pg_advisory_xact_lock(" RUNNER_POLICY_LOCK("$1::text") ")";

constexpr std::string_view kUpsertPolicy =
    "INSERT INTO queue_policies AS p (queue, max_running, max_running_per_group, rate_count,"
    " rate_per, paused) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (queue) DO UPDATE SET max_running = excluded.max_running,"
    " max_running_per_group = excluded.max_running_per_group, rate_count = excluded.rate_count,"
    " rate_per = excluded.rate_per, paused = excluded.paused, updated_at = now(),"
    " run_slots = CASE WHEN excluded.max_running IS NULL THEN 0"
    "   ELSE least(p.run_slots, excluded.max_running) END"
    " RETURNING runner_policy_caps(p)";

// The run slots above the cap go (a running task still in one holds the
// capped claims back until it ends: queue_policy_schema.h, v5).
constexpr std::string_view kTrimRunSlots =
    "DELETE FROM queue_run_slots s USING queue_policies p WHERE s.queue = $1 AND p.queue = $1"
    " AND s.slot > p.run_slots";

// The rate ring keeps the `count` latest starts (all of them when the count
// did not shrink: a pause or another cap changes nothing in it), as rows
// 1..n; none without a rate limit. $2: the count, NULL for none.
constexpr std::string_view kRingNeedsTrim =
    "SELECT EXISTS (SELECT 1 FROM queue_rate_slots WHERE queue = $1"
    " AND ($2::integer IS NULL OR slot > $2::integer))";
constexpr std::string_view kTrimRing =
    "WITH keep AS (SELECT at FROM queue_rate_slots WHERE queue = $1"
    "  ORDER BY at DESC LIMIT coalesce($2::integer, 0)"
    "), del AS (DELETE FROM queue_rate_slots WHERE queue = $1"
    ") INSERT INTO queue_rate_slots (queue, slot, at)"
    "  SELECT $1, -(row_number() OVER (ORDER BY at))::integer, at FROM keep";
constexpr std::string_view kRenumberRing =
    "WITH u AS (UPDATE queue_rate_slots SET slot = -slot WHERE queue = $1 AND slot < 0)"
    " UPDATE queue_policies SET rate_slots = (SELECT count(*) FROM queue_rate_slots"
    "  WHERE queue = $1 AND slot < 0) WHERE queue = $1";

constexpr std::string_view kDeleteSlots =
    "WITH r AS (DELETE FROM queue_run_slots WHERE queue = $1)"
    " DELETE FROM queue_rate_slots WHERE queue = $1";

constexpr std::string_view kDeletePolicy =
    "DELETE FROM queue_policies WHERE queue = $1 RETURNING queue";

// The queued tasks of the queue move between the claim index and the capped one.
constexpr std::string_view kRecap =
    "UPDATE tasks SET capped = $2 WHERE state = 'queued' AND queue = $1 AND capped <> $2";

constexpr std::string_view kQueueEvent =
    "WITH ev AS (INSERT INTO events (kind, data) VALUES ('queue.updated', $2::jsonb))"
    " SELECT pg_notify('runner_tasks', $1)";

constexpr std::string_view kNextRateOpening =
    "SELECT (extract(epoch FROM min(o.opens - clock_timestamp())) * 1000)::bigint FROM ("
    "  SELECT (SELECT min(s.at) FROM queue_rate_slots s WHERE s.queue = p.queue)"
    "         + p.rate_per * interval '1 second' AS opens"
    "  FROM queue_policies p"
    "  WHERE p.rate_count IS NOT NULL AND NOT p.paused AND p.rate_slots >= p.rate_count"
    "    AND ($1::text[] IS NULL OR p.queue = ANY($1::text[]))"
    "    AND EXISTS (SELECT 1 FROM tasks q WHERE q.state = 'queued' AND q.capped"
    "                AND q.queue = p.queue AND q.run_at <= now())"
    ") o WHERE o.opens > clock_timestamp() - interval '250 milliseconds'";

std::optional<int> OptInt(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<int>();
}

QueueInfo RowToQueue(const pqxx::row& r) {
  QueueInfo q;
  q.name = r[0].as<std::string>();
  q.queued = r[1].as<int64_t>();
  q.running = r[2].as<int64_t>();
  q.groups = r[3].as<int64_t>();
  q.policy.max_running = OptInt(r[4]);
  q.policy.max_running_per_group = OptInt(r[5]);
  if (!r[6].is_null()) q.policy.rate_limit = RateLimit{r[6].as<int>(), r[7].as<double>()};
  q.policy.paused = !r[8].is_null() && r[8].as<bool>();
  const int64_t recent = r[9].is_null() ? 0 : r[9].as<int64_t>();
  if (q.policy.paused) {
    q.throttled = "paused";
  } else if (q.queued > 0 && q.policy.max_running && q.running >= *q.policy.max_running) {
    q.throttled = "max_running";
  } else if (q.queued > 0 && q.policy.rate_limit && recent >= q.policy.rate_limit->count) {
    q.throttled = "rate_limit";
  }
  return q;
}

std::string PolicyJson(std::string_view queue, const std::optional<QueuePolicy>& p) {
  json::object o{{"queue", std::string(queue)}, {"policy", nullptr}};
  if (p) {
    json::object pol{{"paused", p->paused}};
    pol["max_running"] = p->max_running ? json::value(*p->max_running) : json::value(nullptr);
    pol["max_running_per_group"] =
        p->max_running_per_group ? json::value(*p->max_running_per_group) : json::value(nullptr);
    if (p->rate_limit) {
      pol["rate_limit"] =
          json::object{{"count", p->rate_limit->count}, {"per", p->rate_limit->per}};
    } else {
      pol["rate_limit"] = nullptr;
    }
    o["policy"] = std::move(pol);
  }
  return json::serialize(o);
}

std::string QueueArrayOrNull(const std::vector<std::string>& queues, bool& null) {
  null = queues.empty();
  std::string out = "{";
  for (std::size_t i = 0; i < queues.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char c : queues[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

Error QueueNotFound(std::string_view queue) {
  return Error{"not_found", "no queue " + std::string(queue) +
                                ": it has no policy and no queued or running task"};
}

}  // namespace

std::optional<Error> ValidateQueuePolicy(const QueuePolicy& p) {
  auto bad = [](const char* field, const char* why) {
    return Error{"validation_failed", std::string(field) + ": " + why};
  };
  if (p.max_running && (*p.max_running < 1 || *p.max_running > kMaxCap)) {
    return bad("max_running", "must be a positive integer (at most 1000000)");
  }
  if (p.max_running_per_group &&
      (*p.max_running_per_group < 1 || *p.max_running_per_group > kMaxCap)) {
    return bad("max_running_per_group", "must be a positive integer (at most 1000000)");
  }
  if (p.rate_limit) {
    if (p.rate_limit->count < 1 || p.rate_limit->count > kMaxCap) {
      return bad("rate_limit.count", "must be a positive integer (at most 1000000)");
    }
    if (!std::isfinite(p.rate_limit->per) || p.rate_limit->per <= 0 || p.rate_limit->per > 86400) {
      return bad("rate_limit.per", "must be a number of seconds > 0 (at most 86400)");
    }
  }
  return std::nullopt;
}

Result<QueueInfo> PostgresStore::SetQueuePolicy(std::string_view queue, const QueuePolicy& policy) {
  if (!IsValidQueueName(queue)) {
    return Error{"validation_failed", "queue: must be 1..64 characters of A-Z a-z 0-9 _ . -"};
  }
  if (auto e = ValidateQueuePolicy(policy)) return *e;
  QueueInfo out;
  Status st = WithConnection("set_queue_policy", [&](pqxx::connection_base& c) -> Status {
    pqxx::work tx(c);
    const std::string q(queue);
    tx.exec_params(std::string(kLockPolicy), q);
    auto text = [](const auto& v) -> std::optional<std::string> {
      if (!v) return std::nullopt;
      return pqxx::to_string(*v);
    };
    std::optional<std::string> rate_count;
    std::optional<std::string> rate_per;
    if (policy.rate_limit) {
      rate_count = pqxx::to_string(policy.rate_limit->count);
      rate_per = pqxx::to_string(policy.rate_limit->per);
    }
    const auto max_running = text(policy.max_running);
    const auto per_group = text(policy.max_running_per_group);
    auto cstr = [](const std::optional<std::string>& v) { return v ? v->c_str() : nullptr; };
    auto r = tx.exec_params(std::string(kUpsertPolicy), q, cstr(max_running), cstr(per_group),
                            cstr(rate_count), cstr(rate_per), policy.paused);
    const bool caps = r[0][0].as<bool>();
    tx.exec_params(std::string(kTrimRunSlots), q);
    if (tx.exec_params(std::string(kRingNeedsTrim), q, cstr(rate_count))[0][0].as<bool>()) {
      tx.exec_params(std::string(kTrimRing), q, cstr(rate_count));
      tx.exec_params(std::string(kRenumberRing), q);
    }
    tx.exec_params(std::string(kRecap), q, caps);
    tx.exec_params(std::string(kQueueEvent), q, PolicyJson(q, policy));
    auto row = tx.exec_params(std::string(kQueueRow), q);
    out = RowToQueue(row[0]);
    tx.commit();
    return {};
  });
  if (!st.ok()) return st.error();
  return out;
}

Result<QueueInfo> PostgresStore::GetQueue(std::string_view queue) {
  QueueInfo out;
  bool found = false;
  Status st = WithConnection("get_queue", [&](pqxx::connection_base& c) -> Status {
    pqxx::nontransaction tx(c);
    auto r = tx.exec_params(std::string(kQueueRow), std::string(queue));
    out = RowToQueue(r[0]);
    found = r[0][10].as<bool>() || out.queued > 0 || out.running > 0;
    return {};
  });
  if (!st.ok()) return st.error();
  if (!found) return QueueNotFound(queue);
  return out;
}

Status PostgresStore::DeleteQueuePolicy(std::string_view queue) {
  bool found = false;
  Status st = WithConnection("delete_queue_policy", [&](pqxx::connection_base& c) -> Status {
    pqxx::work tx(c);
    const std::string q(queue);
    tx.exec_params(std::string(kLockPolicy), q);
    found = !tx.exec_params(std::string(kDeletePolicy), q).empty();
    if (!found) return {};
    tx.exec_params(std::string(kDeleteSlots), q);
    tx.exec_params(std::string(kRecap), q, false);
    tx.exec_params(std::string(kQueueEvent), q, PolicyJson(q, std::nullopt));
    tx.commit();
    return {};
  });
  if (!st.ok()) return st;
  if (!found) return Error{"not_found", "queue " + std::string(queue) + " has no policy"};
  return {};
}

Result<std::vector<QueueInfo>> PostgresStore::ListQueues() {
  std::vector<QueueInfo> out;
  Status st = WithConnection("list_queues", [&](pqxx::connection_base& c) -> Status {
    pqxx::nontransaction tx(c);
    for (const auto& row : tx.exec(std::string(kQueueRows))) out.push_back(RowToQueue(row));
    return {};
  });
  if (!st.ok()) return st.error();
  return out;
}

std::optional<std::chrono::milliseconds> PostgresStore::NextRateOpening(
    const ClaimRequest& request) {
  bool all = false;
  const std::string queues = QueueArrayOrNull(request.queues, all);
  std::optional<std::chrono::milliseconds> out;
  Status st = WithConnection("next_rate_opening", [&](pqxx::connection_base& c) -> Status {
    pqxx::nontransaction tx(c);
    auto r = tx.exec_params(std::string(kNextRateOpening), all ? nullptr : queues.c_str());
    if (!r.empty() && !r[0][0].is_null()) {
      // A window that opened just now, between the claim that found it shut
      // and this query, means claim again soon: leaving it out left the task
      // to the idle poll (a minute), since no claim was due. One that opened
      // longer ago is held by something else (a cap), which a finish wakes.
      out = std::chrono::milliseconds(std::max<int64_t>(20, r[0][0].as<int64_t>()));
    }
    return {};
  });
  if (!st.ok()) return std::nullopt;
  return out;
}

}  // namespace runner::queue
