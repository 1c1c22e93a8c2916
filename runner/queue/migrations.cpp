#include "runner/queue/migrations.h"

#include <spdlog/spdlog.h>

#include <pqxx/pqxx>

#include "runner/queue/capped_claim_schema.h"
#include "runner/queue/queue_policy_schema.h"

namespace runner::queue {
namespace {

constexpr std::string_view kCreateMigrationsTable = R"sql(
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
))sql";

// v1: the data model of docs/architecture.md. Partial indexes keep the claim and the
// live-state counts off the (large) history of finished tasks; finished-state
// counts are kept in sharded counters maintained by a trigger, so Counts()
// never scans the whole table. No index covers lease_expires_at, the log
// counters or the tails, and the table keeps free space in each page, so lease
// renewals and log appends are HOT updates that touch no index.
constexpr std::string_view kV1Schema = R"sql(
CREATE TABLE tasks (
  id               text PRIMARY KEY,
  queue            text NOT NULL,
  state            text NOT NULL CHECK (state IN
                     ('queued','running','succeeded','failed','cancelled','timed_out')),
  priority         integer NOT NULL DEFAULT 0,
  run_at           timestamptz NOT NULL DEFAULT now(),
  attempt          integer NOT NULL DEFAULT 0,
  max_attempts     integer NOT NULL DEFAULT 1,
  backoff          double precision NOT NULL DEFAULT 1,
  isolation        text NOT NULL DEFAULT 'auto',
  isolation_used   text,
  image            text NOT NULL,
  command          text[] NOT NULL,
  env              jsonb NOT NULL DEFAULT '{}',
  limits           jsonb NOT NULL DEFAULT '{}',
  timeout          double precision NOT NULL,
  depends_on       text[] NOT NULL DEFAULT '{}',
  idempotency_key  text UNIQUE,
  labels           jsonb NOT NULL DEFAULT '{}',
  lease_owner      text,
  node_id          text,
  lease_expires_at timestamptz,
  cancel_requested boolean NOT NULL DEFAULT false,
  exit_code        integer,
  error            jsonb,
  usage            jsonb,
  stdout_tail      text NOT NULL DEFAULT '',
  stderr_tail      text NOT NULL DEFAULT '',
  log_bytes        bigint NOT NULL DEFAULT 0,
  log_seq          bigint NOT NULL DEFAULT 0,
  logs_truncated   boolean NOT NULL DEFAULT false,
  has_dependents   boolean NOT NULL DEFAULT false,
  created_at       timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz
) WITH (fillfactor = 80);
CREATE INDEX tasks_claim_idx ON tasks (priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX tasks_running_idx ON tasks (lease_owner) WHERE state = 'running';
CREATE INDEX tasks_depends_on_idx ON tasks USING gin (depends_on) WHERE state = 'queued';
CREATE INDEX tasks_list_idx ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_state_list_idx ON tasks (state, created_at DESC, id DESC);
CREATE INDEX tasks_queue_list_idx ON tasks (queue, created_at DESC, id DESC);
CREATE INDEX tasks_finished_idx ON tasks (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE task_final_counts (
  state text NOT NULL,
  shard integer NOT NULL,
  n     bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (state, shard)
);
INSERT INTO task_final_counts (state, shard)
  SELECT s, g FROM unnest(ARRAY['succeeded','failed','cancelled','timed_out']) s,
                   generate_series(0, 15) g;

CREATE FUNCTION runner_count_final() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  s integer := floor(random() * 16)::integer;  -- spreads concurrent writers over 16 rows
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state NOT IN ('queued', 'running') THEN
    UPDATE task_final_counts SET n = n - 1 WHERE state = OLD.state AND shard = s;
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.state NOT IN ('queued', 'running') THEN
    UPDATE task_final_counts SET n = n + 1 WHERE state = NEW.state AND shard = s;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER tasks_count_final_upd AFTER UPDATE OF state ON tasks FOR EACH ROW
  WHEN (OLD.state IS DISTINCT FROM NEW.state AND
        (OLD.state NOT IN ('queued','running') OR NEW.state NOT IN ('queued','running')))
  EXECUTE FUNCTION runner_count_final();
CREATE TRIGGER tasks_count_final_ins AFTER INSERT ON tasks FOR EACH ROW
  WHEN (NEW.state NOT IN ('queued','running'))
  EXECUTE FUNCTION runner_count_final();
CREATE TRIGGER tasks_count_final_del AFTER DELETE ON tasks FOR EACH ROW
  WHEN (OLD.state NOT IN ('queued','running'))
  EXECUTE FUNCTION runner_count_final();

CREATE TABLE task_logs (
  task_id text NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  seq     bigint NOT NULL,
  stream  smallint NOT NULL,
  data    bytea NOT NULL,
  PRIMARY KEY (task_id, seq)
);

CREATE TABLE nodes (
  id           text PRIMARY KEY,
  host         text NOT NULL DEFAULT '',
  pid          bigint NOT NULL DEFAULT 0,
  mode         text NOT NULL DEFAULT '',
  target       integer NOT NULL DEFAULT 0,
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now(),
  dead_at      timestamptz
) WITH (fillfactor = 50);

CREATE TABLE workers (
  id           text PRIMARY KEY,
  node_id      text NOT NULL,
  state        text NOT NULL CHECK (state IN ('starting','idle','busy','stopping')),
  current_task text,
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);  -- rewritten every heartbeat: keep the updates HOT
CREATE INDEX workers_node_idx ON workers (node_id);

CREATE TABLE events (
  id        bigserial PRIMARY KEY,
  at        timestamptz NOT NULL DEFAULT now(),
  kind      text NOT NULL,
  task_id   text,
  worker_id text,
  data      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_at_idx ON events (at);
)sql";

// v2: schedules (runner/schedule/schedule_store.h). A schedule's slot is
// claimed and its task inserted in one statement, guarded by next_run_at, so
// each slot makes at most one task across nodes. `task` is the task body as
// the client sent it; `task_row` the insert record with the defaults applied.
// The partial index serves the overlap check (a live task of this schedule).
constexpr std::string_view kV2Schedules = R"sql(
CREATE TABLE schedules (
  name         text PRIMARY KEY,
  cron         text,
  timezone     text NOT NULL DEFAULT 'UTC',
  every_us     bigint,
  task         jsonb NOT NULL,
  task_row     jsonb NOT NULL,
  overlap      text NOT NULL CHECK (overlap IN ('skip','allow','cancel_previous')),
  catch_up     text NOT NULL CHECK (catch_up IN ('none','latest','all')),
  paused       boolean NOT NULL DEFAULT false,
  next_run_at  timestamptz,
  last_run_at  timestamptz,
  last_task_id text,
  created_at   timestamptz NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  CHECK ((cron IS NULL) <> (every_us IS NULL))
);
CREATE INDEX schedules_next_idx ON schedules (next_run_at);
ALTER TABLE tasks ADD COLUMN schedule text, ADD COLUMN scheduled_for timestamptz;
CREATE INDEX tasks_schedule_list_idx ON tasks (schedule, created_at DESC, id DESC)
  WHERE schedule IS NOT NULL;
CREATE INDEX tasks_schedule_live_idx ON tasks (schedule)
  WHERE schedule IS NOT NULL AND state IN ('queued', 'running');
)sql";

// v4: task secrets: the names (returned by the API) and the sealed values
// (runner/secrets: XChaCha20-Poly1305 under the node key, the task id as
// associated data). A trigger, not each statement that ends a task, drops the
// ciphertext once the task is final: every path to a final state (finish,
// cancel, dependency failure, the reaper) is covered by one rule.
constexpr std::string_view kV4Secrets = R"sql(
ALTER TABLE tasks ADD COLUMN secret_names text[] NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD COLUMN secrets_sealed bytea;
CREATE FUNCTION tasks_drop_final_secrets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.secrets_sealed := NULL;
  RETURN NEW;
END $$;
CREATE TRIGGER tasks_drop_final_secrets BEFORE INSERT OR UPDATE ON tasks
  FOR EACH ROW
  WHEN (NEW.secrets_sealed IS NOT NULL
        AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out'))
  EXECUTE FUNCTION tasks_drop_final_secrets();
)sql";

const std::vector<Migration> kMigrations = {
    {1, "queue schema", kV1Schema},
    {2, "schedules", kV2Schedules},
    {3, "task groups and queue policies", kV2QueuePolicies},
    {4, "task secrets", kV4Secrets},
    {5, "queue cap slots and rate rings", kV5CapSlots},
    {6, "capped claim in fewer statements", kV6CappedClaim},
    {7, "capped finishes wake only waiting claimers", kV7WaitingClaims},
    {8, "capped claim locks its slots with the policy lock", kV8LeanCappedClaim},
};

}  // namespace

const std::vector<Migration>& Migrations() { return kMigrations; }

std::string WithConnectTimeout(const std::string& conninfo, int seconds) {
  if (conninfo.find("connect_timeout") != std::string::npos) return conninfo;
  std::string value = "connect_timeout=" + std::to_string(seconds);
  if (conninfo.rfind("postgres://", 0) == 0 || conninfo.rfind("postgresql://", 0) == 0) {
    return conninfo + (conninfo.find('?') == std::string::npos ? "?" : "&") + value;
  }
  return conninfo.empty() ? value : conninfo + " " + value;
}

Status Migrate(const std::string& conninfo) {
  try {
    pqxx::connection conn(WithConnectTimeout(conninfo, 10));
    {
      pqxx::nontransaction tx(conn);
      // Bounded: a node that cannot get the lock in a minute reports it rather than hang.
      tx.exec("SET lock_timeout = '60s'");
      tx.exec("SELECT pg_advisory_lock(" + std::to_string(kMigrationLockKey) + ")");
      tx.exec("SET lock_timeout = 0");
      tx.exec(std::string(kCreateMigrationsTable));
    }
    Status status;
    for (const auto& m : kMigrations) {
      pqxx::work tx(conn);
      auto r = tx.exec_params("SELECT 1 FROM schema_migrations WHERE version = $1", m.version);
      if (!r.empty()) continue;
      try {
        tx.exec(std::string(m.sql));
        tx.exec_params("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version,
                       std::string(m.name));
        tx.commit();
        spdlog::info("queue migration applied version={} name=\"{}\"", m.version, m.name);
      } catch (const pqxx::sql_error& e) {
        status = Error{"internal", "migration " + std::to_string(m.version) + " (" +
                                       std::string(m.name) + ") failed: " + e.what()};
        break;
      }
    }
    pqxx::nontransaction tx(conn);
    tx.exec("SELECT pg_advisory_unlock(" + std::to_string(kMigrationLockKey) + ")");
    return status;
  } catch (const pqxx::broken_connection& e) {
    return Error{"unavailable", std::string("cannot reach the database to migrate: ") + e.what()};
  } catch (const pqxx::sql_error& e) {
    return Error{"unavailable", std::string("migration could not start: ") + e.what()};
  }
}

}  // namespace runner::queue
