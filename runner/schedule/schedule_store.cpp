#include "runner/schedule/schedule_store.h"

#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <cmath>
#include <map>
#include <pqxx/pqxx>

#include "base/ulid.h"
#include "runner/queue/db_failure.h"
#include "runner/queue/migrations.h"
#include "runner/schedule/schedule_sql.h"
#include "runner/secrets/secret_box.h"

namespace runner::schedule {
namespace {

namespace json = boost::json;

std::optional<Micros> OptMicros(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<Micros>();
}

std::optional<std::string> OptString(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}

// Column order of RUNNER_SCHEDULE_COLUMNS. The task is shown as sent; its
// parsed form is not needed by readers.
Schedule RowToSchedule(const pqxx::row& r) {
  Schedule s;
  s.spec.name = r[0].as<std::string>();
  s.spec.cron = OptString(r[1]);
  s.spec.timezone = r[2].as<std::string>();
  if (!r[3].is_null()) s.spec.every = static_cast<double>(r[3].as<Micros>()) / 1e6;
  s.spec.task_json = r[4].as<std::string>();
  s.spec.overlap = ParseOverlap(r[5].as<std::string>()).value_or(Overlap::kSkip);
  s.spec.catch_up = ParseCatchUp(r[6].as<std::string>()).value_or(CatchUp::kNone);
  s.spec.paused = r[7].as<bool>();
  if (auto v = OptMicros(r[8])) s.next_run_at = FromMicros(*v);
  if (auto v = OptMicros(r[9])) s.last_run_at = FromMicros(*v);
  s.last_task_id = OptString(r[10]);
  s.created_at = FromMicros(r[11].as<Micros>());
  return s;
}

Error NotFound(const std::string& name) {
  return Error{"not_found", "no schedule named " + name + " (GET /api/v1/schedules lists them)"};
}

// libpqxx 6.4 passes NULL as a null char pointer: optionals go through text.
std::optional<std::string> Text(const std::optional<Micros>& v) {
  if (!v) return std::nullopt;
  return std::to_string(*v);
}

const char* Nullable(const std::optional<std::string>& s) { return s ? s->c_str() : nullptr; }

std::optional<std::string> EveryMicros(const ScheduleSpec& spec) {
  if (!spec.every) return std::nullopt;
  return std::to_string(static_cast<Micros>(std::llround(*spec.every * 1e6)));
}

// The associated data of a schedule's sealed secrets: a blob copied onto
// another schedule (or a task) does not open.
std::string SecretsAd(const std::string& name) { return "schedule:" + name; }

// The insert record of the schedule's tasks, with its secrets' names and the
// secrets sealed for the schedule.
Result<json::object> TaskRow(const ScheduleSpec& spec, const queue::StoreOptions& options) {
  json::object row = queue::TaskInsertRecord(spec.task, options);
  if (spec.task.secrets.empty()) return row;
  if (!options.secret_key) {
    return Error{"internal",
                 "secrets: this node has no secret key to seal them with; start it with "
                 "--secret-key-file"};
  }
  json::object values;
  json::array names;
  for (const auto& [name, value] : spec.task.secrets) {
    values[name] = value;
    names.emplace_back(name);
  }
  row["secret_names"] = std::move(names);
  row["secrets_sealed"] = secrets::ToHex(
      secrets::Seal(*options.secret_key, json::serialize(values), SecretsAd(spec.name)));
  return row;
}

// The stored values of `names` (ScheduleSpec::keep_secrets) from the
// schedule's sealed secrets.
Result<std::map<std::string, std::string>> KeptSecrets(const queue::StoreOptions& options,
                                                       const std::string& schedule,
                                                       const std::optional<std::string>& sealed_hex,
                                                       const std::vector<std::string>& names) {
  auto bad = [](const std::string& why) {
    return Error{"validation_failed", "task.secrets: " + why};
  };
  if (!sealed_hex) {
    return bad("the schedule has no stored secrets to keep; give NAME: VALUE pairs");
  }
  if (!options.secret_key) {
    return Error{"internal",
                 "secrets: this node has no secret key to open them with; start it with "
                 "--secret-key-file"};
  }
  auto opened =
      secrets::Open(*options.secret_key, secrets::FromHex(*sealed_hex), SecretsAd(schedule));
  if (!opened) {
    return bad("this node cannot open the stored secrets (" + opened.error().message +
               "); give their values again");
  }
  std::map<std::string, std::string> stored;
  json::error_code ec;
  const json::value parsed = json::parse(*opened, ec);
  if (!ec && parsed.is_object()) {
    for (const auto& [k, v] : parsed.get_object()) {
      if (v.is_string()) stored.emplace(std::string(k), std::string(v.get_string()));
    }
  }
  std::map<std::string, std::string> kept;
  for (const auto& name : names) {
    auto it = stored.find(name);
    if (it == stored.end()) {
      return bad(name + " has no stored value; give it as NAME: VALUE");
    }
    kept.emplace(name, it->second);
  }
  return kept;
}

// The schedule's secrets sealed again for the task `task_id`. When this node
// cannot open them the schedule's blob goes on unchanged: no claim opens it,
// so the task fails with secrets_unavailable instead of running without them.
std::optional<std::string> SecretsForTask(const queue::StoreOptions& options,
                                          const std::string& schedule,
                                          const std::optional<std::string>& sealed_hex,
                                          const std::string& task_id) {
  if (!sealed_hex) return std::nullopt;
  if (!options.secret_key) {
    spdlog::error("schedules: cannot open the secrets of schedule={}: this node has no secret key",
                  schedule);
    return sealed_hex;
  }
  auto opened =
      secrets::Open(*options.secret_key, secrets::FromHex(*sealed_hex), SecretsAd(schedule));
  if (!opened) {
    spdlog::error("schedules: cannot open the secrets of schedule={} error=\"{}\"", schedule,
                  opened.error().message);
    return sealed_hex;
  }
  return secrets::ToHex(secrets::Seal(*options.secret_key, *opened, task_id));
}

}  // namespace

class ScheduleStore::Connection : public pqxx::connection {
 public:
  using pqxx::connection::connection;
};

ScheduleStore::ScheduleStore(queue::StoreOptions options) : options_(std::move(options)) {}
ScheduleStore::~ScheduleStore() = default;

Result<std::unique_ptr<ScheduleStore>> ScheduleStore::Open(const queue::StoreOptions& options) {
  std::unique_ptr<ScheduleStore> store(new ScheduleStore(options));
  auto ping = store->EarliestNext();
  if (!ping.ok()) return ping.error();
  return Result<std::unique_ptr<ScheduleStore>>(std::move(store));
}

void ScheduleStore::OnChange(std::function<void()> fn) {
  std::lock_guard lock(change_mu_);
  on_change_ = std::move(fn);
}

void ScheduleStore::Changed() {
  std::lock_guard lock(change_mu_);
  if (on_change_) on_change_();
}

// Runs f(connection) on the store's connection (reopened when broken),
// mapping database failures to Error values as the queue store does
// (queue::ClassifyDbFailure; a conflict is not retried here: the caller's
// next pass runs it again).
template <class R, class F>
R ScheduleStore::Run(const char* op, F&& f) {
  {
    std::unique_lock lock(mu_);
    if (!idle_cv_.wait_for(lock, options_.acquire_timeout, [&] { return !busy_; })) {
      return Error{"unavailable", std::string("the schedule store stayed busy during ") + op};
    }
    busy_ = true;
  }
  struct Release {
    ScheduleStore& store;
    ~Release() {
      {
        std::lock_guard lock(store.mu_);
        store.busy_ = false;
      }
      store.idle_cv_.notify_one();
    }
  } release{*this};
  try {
    if (!conn_ || !conn_->is_open()) {
      conn_ = std::make_unique<Connection>(queue::WithConnectTimeout(options_.conninfo, 5));
      pqxx::nontransaction tx(*conn_);
      const auto ms = std::to_string(options_.statement_timeout.count());
      tx.exec("SET statement_timeout = " + ms + "; SET lock_timeout = " + ms + "; " +
              std::string(sql::kSessionSettings));
    }
    return f(*conn_);
  } catch (const std::exception&) {
    queue::DbFailure failure = queue::ClassifyDbFailure(std::current_exception(), op);
    if (failure.broken) conn_.reset();
    return failure.error;
  }
}

Result<Schedule> ScheduleStore::Create(const ScheduleSpec& spec, queue::TimePoint now) {
  if (auto e = ValidateSpec(spec)) return *e;
  if (!spec.keep_secrets.empty()) {
    return Error{"validation_failed",
                 "task.secrets: a new schedule has no stored secrets to keep; give NAME: VALUE "
                 "pairs"};
  }
  const Micros created = ToMicros(now);
  auto slots = Slots::For(spec, created);
  if (!slots) return slots.error();
  const auto next = slots->After(created);
  auto task_row = TaskRow(spec, options_);
  if (!task_row) return task_row.error();
  const std::string row = json::serialize(*task_row);
  auto made = Run<Status>("create schedule", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    const auto every = EveryMicros(spec);
    const auto next_text = Text(next);
    auto r = tx.exec_params(
        std::string(sql::kInsertSchedule), spec.name, Nullable(spec.cron), spec.timezone,
        Nullable(every), spec.task_json, row, std::string(ToString(spec.overlap)),
        std::string(ToString(spec.catch_up)), spec.paused, Nullable(next_text), created);
    if (r.empty()) {
      return Error{"conflict", "a schedule named " + spec.name + " exists; PUT /api/v1/schedules/" +
                                   spec.name + " replaces it"};
    }
    return {};
  });
  if (!made.ok()) return made.error();
  Changed();
  return Get(spec.name);
}

Result<Schedule> ScheduleStore::Replace(const ScheduleSpec& given, queue::TimePoint now) {
  if (auto e = ValidateSpec(given)) return *e;
  auto done = Run<Status>("replace schedule", [&](pqxx::connection& c) -> Status {
    pqxx::work tx(c);
    auto locked = tx.exec_params(std::string(sql::kLockSchedule), given.name);
    if (locked.empty()) return NotFound(given.name);
    ScheduleSpec spec = given;
    if (!spec.keep_secrets.empty()) {
      auto kept = KeptSecrets(options_, spec.name, OptString(locked[0][1]), spec.keep_secrets);
      if (!kept) return kept.error();
      spec.task.secrets = std::move(*kept);
      spec.keep_secrets.clear();
      if (auto e = ValidateSpec(spec)) return *e;  // e.g. a kept name now also in env
    }
    auto task_row = TaskRow(spec, options_);
    if (!task_row) return task_row.error();
    const std::string row = json::serialize(*task_row);
    auto slots = Slots::For(spec, locked[0][0].as<Micros>());
    if (!slots) return slots.error();
    const auto next = Text(slots->After(ToMicros(now)));
    const auto every = EveryMicros(spec);
    tx.exec_params(std::string(sql::kReplaceSchedule), spec.name, Nullable(spec.cron),
                   spec.timezone, Nullable(every), spec.task_json, row,
                   std::string(ToString(spec.overlap)), std::string(ToString(spec.catch_up)),
                   spec.paused, Nullable(next));
    tx.commit();
    return {};
  });
  if (!done.ok()) return done.error();
  Changed();
  return Get(given.name);
}

Result<Schedule> ScheduleStore::Get(const std::string& name) {
  return Run<Result<Schedule>>("get schedule", [&](pqxx::connection& c) -> Result<Schedule> {
    pqxx::nontransaction tx(c);
    auto r = tx.exec_params(std::string(sql::kSchedule), name);
    if (r.empty()) return NotFound(name);
    return RowToSchedule(r[0]);
  });
}

Result<std::vector<Schedule>> ScheduleStore::List() {
  using R = Result<std::vector<Schedule>>;
  return Run<R>("list schedules", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    std::vector<Schedule> out;
    for (const auto& row : tx.exec(std::string(sql::kSchedules))) {
      out.push_back(RowToSchedule(row));
    }
    return out;
  });
}

Status ScheduleStore::Delete(const std::string& name) {
  auto done = Run<Status>("delete schedule", [&](pqxx::connection& c) -> Status {
    pqxx::nontransaction tx(c);
    auto r = tx.exec_params(std::string(sql::kDeleteSchedule), name);
    if (r.empty()) return NotFound(name);
    return {};
  });
  if (done.ok()) Changed();
  return done;
}

Result<std::string> ScheduleStore::Trigger(const std::string& name, queue::TimePoint now) {
  using R = Result<std::string>;
  return Run<R>("trigger schedule", [&](pqxx::connection& c) -> R {
    pqxx::work tx(c);
    auto found = tx.exec_params(std::string(sql::kScheduleSecrets), name);
    if (found.empty()) return NotFound(name);
    const std::string id = NewUlid();
    const auto sealed = SecretsForTask(options_, name, OptString(found[0][0]), id);
    auto r = tx.exec_params(std::string(sql::kTrigger), name, id, ToMicros(now), Nullable(sealed));
    if (r.empty()) return NotFound(name);
    tx.commit();
    return r[0][0].as<std::string>();
  });
}

Result<std::vector<DueSchedule>> ScheduleStore::Due(Micros now, int limit) {
  using R = Result<std::vector<DueSchedule>>;
  return Run<R>("due schedules", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    std::vector<DueSchedule> out;
    for (const auto& r : tx.exec_params(std::string(sql::kDue), now, limit)) {
      DueSchedule d;
      d.spec.name = r[0].as<std::string>();
      d.spec.cron = OptString(r[1]);
      d.spec.timezone = r[2].as<std::string>();
      if (!r[3].is_null()) d.spec.every = static_cast<double>(r[3].as<Micros>()) / 1e6;
      d.spec.overlap = ParseOverlap(r[4].as<std::string>()).value_or(Overlap::kSkip);
      d.spec.catch_up = ParseCatchUp(r[5].as<std::string>()).value_or(CatchUp::kNone);
      d.spec.paused = r[6].as<bool>();
      d.created_at = r[7].as<Micros>();
      d.next_run_at = r[8].as<Micros>();
      d.secrets_sealed = OptString(r[9]);
      out.push_back(std::move(d));
    }
    return out;
  });
}

Result<FireOutcome> ScheduleStore::Fire(const FireStep& step) {
  using R = Result<FireOutcome>;
  return Run<R>("fire schedule", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);  // one statement: atomic on its own
    const auto slot = Text(step.slot);
    const auto next = Text(step.next);
    const std::string id = NewUlid();
    const auto sealed =
        step.slot ? SecretsForTask(options_, step.name, step.secrets_sealed, id) : std::nullopt;
    auto r = tx.exec_params(std::string(sql::kFire), step.name, step.expected, Nullable(slot),
                            Nullable(next), id, step.missed, Nullable(sealed));
    FireOutcome out;
    out.moved = r[0][0].as<int64_t>() > 0;
    out.skipped = r[0][1].as<bool>();
    out.task_id = OptString(r[0][2]);
    out.cancelled = static_cast<int>(r[0][3].as<int64_t>());
    return out;
  });
}

Result<std::optional<Micros>> ScheduleStore::EarliestNext() {
  using R = Result<std::optional<Micros>>;
  return Run<R>("earliest schedule", [&](pqxx::connection& c) -> R {
    pqxx::nontransaction tx(c);
    auto r = tx.exec(std::string(sql::kEarliestNext));
    return OptMicros(r[0][0]);
  });
}

}  // namespace runner::schedule
