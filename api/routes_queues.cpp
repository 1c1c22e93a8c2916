#include "api/routes_queues.h"

#include <boost/json.hpp>
#include <cmath>
#include <string>

#include "api/http_reply.h"
#include "api/task_json.h"
#include "base/error_codes.h"
#include "runner/queue/queue_policy.h"
#include "runner/queue/validation.h"

namespace runner::api {
namespace {

namespace json = boost::json;
using httplib::Request;
using httplib::Response;

Error Invalid(const std::string& field, const std::string& why) {
  return MakeError("validation_failed", field + ": " + why);
}

json::value OptInt(const std::optional<int>& v) { return v ? json::value(*v) : json::value(); }

json::object QueueJson(const queue::QueueInfo& q) {
  json::object o{{"name", q.name},
                 {"queued", q.queued},
                 {"running", q.running},
                 {"groups", q.groups},
                 {"max_running", OptInt(q.policy.max_running)},
                 {"max_running_per_group", OptInt(q.policy.max_running_per_group)},
                 {"paused", q.policy.paused}};
  if (q.policy.rate_limit) {
    o["rate_limit"] =
        json::object{{"count", q.policy.rate_limit->count}, {"per", q.policy.rate_limit->per}};
  } else {
    o["rate_limit"] = nullptr;
  }
  o["throttled"] = q.throttled ? json::value(*q.throttled) : json::value();
  return o;
}

Result<int> PositiveInt(const json::value& v, const std::string& field) {
  if (v.is_int64() && v.as_int64() >= 1 && v.as_int64() <= 1000000) {
    return static_cast<int>(v.as_int64());
  }
  if (v.is_uint64() && v.as_uint64() >= 1 && v.as_uint64() <= 1000000) {
    return static_cast<int>(v.as_uint64());
  }
  return Invalid(field, "must be a positive integer (at most 1000000), or null for no limit");
}

// The PUT body: the whole policy; an absent or null field is no limit.
Result<queue::QueuePolicy> ParsePolicy(const std::string& body) {
  json::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) {
    return MakeError("validation_failed",
                     "body: must be a JSON object such as "
                     "{\"max_running\": 8, \"rate_limit\": {\"count\": 10, "
                     "\"per\": 1.0}}");
  }
  queue::QueuePolicy p;
  for (const auto& kv : v.as_object()) {
    const std::string key(kv.key());
    const json::value& f = kv.value();
    if (key == "max_running" || key == "max_running_per_group") {
      if (f.is_null()) continue;
      auto n = PositiveInt(f, key);
      if (!n) return n.error();
      (key == "max_running" ? p.max_running : p.max_running_per_group) = *n;
    } else if (key == "paused") {
      if (f.is_null()) continue;
      if (!f.is_bool()) return Invalid(key, "must be true or false");
      p.paused = f.as_bool();
    } else if (key == "rate_limit") {
      if (f.is_null()) continue;
      if (!f.is_object()) return Invalid(key, "must be {\"count\": N, \"per\": SECONDS} or null");
      queue::RateLimit rate;
      const auto& o = f.as_object();
      for (const auto& rk : o) {
        if (rk.key() != "count" && rk.key() != "per") {
          return Invalid("rate_limit." + std::string(rk.key()), "unknown field (count, per)");
        }
      }
      const json::value* count = o.if_contains("count");
      if (count == nullptr) return Invalid("rate_limit.count", "required: a positive integer");
      auto n = PositiveInt(*count, "rate_limit.count");
      if (!n) return n.error();
      rate.count = *n;
      const json::value* per = o.if_contains("per");
      if (per == nullptr || !per->is_number()) {
        return Invalid("rate_limit.per", "required: a number of seconds > 0");
      }
      rate.per = per->to_number<double>();
      p.rate_limit = rate;
    } else {
      return Invalid(key, "unknown field (max_running, max_running_per_group, rate_limit, paused)");
    }
  }
  if (auto e = queue::ValidateQueuePolicy(p)) return *e;
  return p;
}

}  // namespace

void QueueRoutes(httplib::Server& s, const Guard& guard, queue::QueueStore& store) {
  auto* policies = dynamic_cast<queue::QueuePolicyStore*>(&store);
  auto no_policies = [](Response& res) {
    SendError(res, MakeError("unavailable", "this store keeps no queue policies"));
  };
  auto name_ok = [](const std::string& name, Response& res) {
    if (queue::IsValidQueueName(name)) return true;
    SendError(res, Invalid("name", "a queue name is 1..64 characters of A-Z a-z 0-9 _ . -"));
    return false;
  };
  s.Get("/api/v1/queues", guard([=](const Request&, Response& res) {
          if (policies == nullptr) return no_policies(res);
          auto list = policies->ListQueues();
          if (!list) return SendError(res, list.error());
          json::array a;
          for (const auto& q : *list) a.emplace_back(QueueJson(q));
          SendJson(res, 200, json::object{{"queues", std::move(a)}});
        }));
  s.Get(R"(/api/v1/queues/([^/]+))", guard([=](const Request& req, Response& res) {
          if (policies == nullptr) return no_policies(res);
          const std::string name = req.matches[1];
          if (!name_ok(name, res)) return;
          auto q = policies->GetQueue(name);
          if (!q) return SendError(res, q.error());
          SendJson(res, 200, QueueJson(*q));
        }));
  s.Put(R"(/api/v1/queues/([^/]+))", guard([=](const Request& req, Response& res) {
          if (policies == nullptr) return no_policies(res);
          const std::string name = req.matches[1];
          if (!name_ok(name, res)) return;
          auto policy = ParsePolicy(req.body);
          if (!policy) return SendError(res, policy.error());
          auto q = policies->SetQueuePolicy(name, *policy);
          if (!q) return SendError(res, q.error());
          SendJson(res, 200, QueueJson(*q));
        }));
  s.Delete(R"(/api/v1/queues/([^/]+))", guard([=](const Request& req, Response& res) {
             if (policies == nullptr) return no_policies(res);
             const std::string name = req.matches[1];
             if (!name_ok(name, res)) return;
             auto st = policies->DeleteQueuePolicy(name);
             if (!st) return SendError(res, st.error());
             res.status = 204;
           }));
}

void QueueMetrics::Set(const std::string& queue, int64_t queued, int64_t running,
                       const std::string& reason) {
  for (const auto& [state, n] : {std::pair{"queued", queued}, {"running", running}}) {
    registry_
        .GetGauge("runner_queue_tasks", "Tasks of a queue by state (cluster-wide)",
                  {{"queue", queue}, {"state", state}})
        .Set(static_cast<double>(n));
  }
  for (const char* r : {"paused", "max_running", "rate_limit"}) {
    registry_
        .GetGauge("runner_queue_throttled",
                  "1 while the queue's tasks are held back, by reason (cluster-wide)",
                  {{"queue", queue}, {"reason", r}})
        .Set(reason == r ? 1 : 0);
  }
}

void QueueMetrics::Refresh() {
  auto* policies = dynamic_cast<queue::QueuePolicyStore*>(&store_);
  if (policies == nullptr) return;
  auto list = policies->ListQueues();
  if (!list) return;
  std::lock_guard lock(mu_);
  std::set<std::string> listed;
  for (const auto& q : *list) {
    Set(q.name, q.queued, q.running, q.throttled.value_or(""));
    listed.insert(q.name);
  }
  for (const auto& name : known_) {
    if (!listed.contains(name)) Set(name, 0, 0, "");
  }
  known_.insert(listed.begin(), listed.end());
}

}  // namespace runner::api
