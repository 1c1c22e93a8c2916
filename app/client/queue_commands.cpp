// runner queues; runner queue set|pause|resume (docs/api.md, Queues).

#include <charconv>
#include <iostream>

#include "api/json_text.h"
#include "app/client/api_client.h"
#include "app/client/commands.h"

namespace runner::app {
namespace {

namespace json = boost::json;

int QueueFail(const Error& e) {
  std::cerr << "runner: " << e.message << "\n";
  return 1;
}

std::string Cell(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr || v->is_null()) return "-";
  if (v->is_string()) return std::string(v->get_string());
  if (v->is_bool()) return v->get_bool() ? "yes" : "no";
  if (v->is_object() && key == "rate_limit") {
    return api::WriteJson(v->at("count")) + "/" + api::WriteJson(v->at("per")) + "s";
  }
  return api::WriteJson(*v);
}

std::string Path(const std::string& name) { return "/api/v1/queues/" + name; }

int PrintQueue(const CommandContext& ctx, const json::value& q) {
  if (ctx.json) {
    std::cout << api::WriteJson(q) << "\n";
    return 0;
  }
  const auto& o = q.as_object();
  std::cout << Cell(o, "name") << ": max_running " << Cell(o, "max_running") << ", per group "
            << Cell(o, "max_running_per_group") << ", rate " << Cell(o, "rate_limit") << ", paused "
            << Cell(o, "paused") << ", throttled " << Cell(o, "throttled") << "\n";
  return 0;
}

}  // namespace

int RunQueues(const CommandContext& ctx) {
  ApiClient client(ctx.client);
  auto res = client.GetJson("/api/v1/queues");
  if (!res) return QueueFail(res.error());
  if (ctx.json) {
    std::cout << api::WriteJson(*res) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "QUEUED", "RUNNING", "GROUPS", "MAX", "PER GROUP", "RATE", "PAUSED", "THROTTLED"}};
  for (const auto& q : res->at("queues").as_array()) {
    const auto& o = q.as_object();
    rows.push_back({Cell(o, "name"), Cell(o, "queued"), Cell(o, "running"), Cell(o, "groups"),
                    Cell(o, "max_running"), Cell(o, "max_running_per_group"), Cell(o, "rate_limit"),
                    Cell(o, "paused"), Cell(o, "throttled")});
  }
  std::vector<std::size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
  return 0;
}

int RunQueueSet(const CommandContext& ctx, const QueueSetArgs& args) {
  json::object body{{"paused", args.paused}};
  if (args.max_running) body["max_running"] = *args.max_running;
  if (args.max_running_per_group) body["max_running_per_group"] = *args.max_running_per_group;
  if (args.rate) {
    const auto slash = args.rate->find('/');
    int count = 0;
    double per = 0;
    bool ok = slash != std::string::npos;
    if (ok) {
      const char* b = args.rate->data();
      ok = std::from_chars(b, b + slash, count).ec == std::errc() &&
           std::from_chars(b + slash + 1, b + args.rate->size(), per).ec == std::errc();
    }
    if (!ok) {
      std::cerr << "runner: --rate: write COUNT/SECONDS, e.g. --rate 10/1.5\n";
      return 2;
    }
    body["rate_limit"] = json::object{{"count", count}, {"per", per}};
  }
  ApiClient client(ctx.client);
  auto res = client.PutJson(Path(args.name), body);
  if (!res) return QueueFail(res.error());
  return PrintQueue(ctx, *res);
}

int RunQueuePause(const CommandContext& ctx, const std::string& name, bool paused) {
  ApiClient client(ctx.client);
  json::object body{{"paused", paused}};
  auto current = client.GetJson(Path(name));
  if (current) {  // keep the rest of the policy
    for (const char* key : {"max_running", "max_running_per_group", "rate_limit"}) {
      body[key] = current->at(key);
    }
  } else if (current.error().code != "not_found") {
    return QueueFail(current.error());
  }
  auto res = client.PutJson(Path(name), body);
  if (!res) return QueueFail(res.error());
  return PrintQueue(ctx, *res);
}

}  // namespace runner::app
