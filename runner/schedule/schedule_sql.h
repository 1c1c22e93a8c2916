#pragma once

// The SQL of the schedule store, as named constants. Times cross as
// microseconds since the epoch (exact); RUNNER_AT turns a bigint parameter
// into a timestamptz. Internal to runner/schedule (schedule_store.cpp).

#include <string_view>

namespace runner::schedule::sql {

// clang-format off
#define RUNNER_AT(p) "('epoch'::timestamptz + (" p ")::bigint * interval '1 microsecond')"
#define RUNNER_US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"

// Column order is RowToSchedule's.
#define RUNNER_SCHEDULE_COLUMNS \
  "name, cron, timezone, every_us, task::text, overlap, catch_up, paused, " \
  RUNNER_US("next_run_at") ", " RUNNER_US("last_run_at") ", last_task_id, " \
  RUNNER_US("created_at")

// The insert of a schedule's task from CTE "s" (name, task_row): `id` and
// `key` are SQL expressions of the new task's id and idempotency key, `slot`
// of its scheduled_for, `sealed` of its sealed secrets (hex text or NULL,
// sealed for this task's id by the store).
#define RUNNER_INSERT_SCHEDULED(id, key, slot, sealed) \
  "INSERT INTO tasks AS t (id, queue, state, priority, run_at, max_attempts, backoff," \
  "  isolation, image, command, env, limits, timeout, idempotency_key, labels, schedule," \
  "  scheduled_for, \"group\", secret_names, secrets_sealed)" \
  " SELECT " id ", x.queue, 'queued', x.priority, now() + x.delay * interval '1 second'," \
  "  x.max_attempts, x.backoff, x.isolation, x.image," \
  "  ARRAY(SELECT a.e FROM jsonb_array_elements_text(x.command) WITH ORDINALITY AS a(e, n)" \
  "        ORDER BY a.n)," \
  "  x.env, x.limits, x.timeout, " key ", x.labels, s.name, " slot ", x.\"group\"," \
  "  ARRAY(SELECT jsonb_array_elements_text(coalesce(x.secret_names, '[]')))," \
  "  decode(" sealed ", 'hex')" \
  " FROM s, jsonb_to_record(s.task_row) AS x(queue text, priority integer, delay float8," \
  "  max_attempts integer, backoff float8, isolation text, image text, command jsonb," \
  "  env jsonb, limits jsonb, timeout float8, labels jsonb, \"group\" text," \
  "  secret_names jsonb)"

// Whether a fire step makes its task: a slot, not paused, and for overlap
// `skip` no live task of the schedule (CTE "live").
#define RUNNER_FIRES(sc) \
  "($3::bigint IS NOT NULL AND NOT " sc ".paused AND (" sc ".overlap <> 'skip' OR live.n = 0))"
// clang-format on

inline constexpr std::string_view kSessionSettings =
    "SET TimeZone = 'UTC'; SET application_name = 'runner-schedules'";

// $1 name, $2 cron, $3 timezone, $4 every_us, $5 task, $6 task_row, $7 overlap,
// $8 catch_up, $9 paused, $10 next_run_at (us or NULL), $11 created_at (us).
inline constexpr std::string_view kInsertSchedule =
    "WITH ins AS ("
    "  INSERT INTO schedules (name, cron, timezone, every_us, task, task_row, overlap,"
    "    catch_up, paused, next_run_at, created_at)"
    "  VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, " RUNNER_AT("$10") ", "
    RUNNER_AT("$11") ")"
    "  ON CONFLICT (name) DO NOTHING RETURNING name"
    "), ev AS ("
    "  INSERT INTO events (kind, data)"
    "  SELECT 'schedule.created', jsonb_build_object('schedule', name) FROM ins"
    ") SELECT name FROM ins";

inline constexpr std::string_view kLockSchedule =
    "SELECT " RUNNER_US("created_at") ", task_row->>'secrets_sealed' FROM schedules"
    " WHERE name = $1 FOR UPDATE";

// The parameters of kInsertSchedule but created_at.
inline constexpr std::string_view kReplaceSchedule =
    "WITH u AS ("
    "  UPDATE schedules SET cron = $2, timezone = $3, every_us = $4, task = $5::jsonb,"
    "    task_row = $6::jsonb, overlap = $7, catch_up = $8, paused = $9,"
    "    next_run_at = " RUNNER_AT("$10") ", updated_at = now()"
    "  WHERE name = $1 RETURNING name"
    "), ev AS ("
    "  INSERT INTO events (kind, data)"
    "  SELECT 'schedule.updated', jsonb_build_object('schedule', name) FROM u"
    ") SELECT name FROM u";

inline constexpr std::string_view kSchedule =
    "SELECT " RUNNER_SCHEDULE_COLUMNS " FROM schedules WHERE name = $1";

inline constexpr std::string_view kSchedules =
    "SELECT " RUNNER_SCHEDULE_COLUMNS " FROM schedules ORDER BY name";

inline constexpr std::string_view kDeleteSchedule =
    "WITH d AS (DELETE FROM schedules WHERE name = $1 RETURNING name), ev AS ("
    "  INSERT INTO events (kind, data)"
    "  SELECT 'schedule.deleted', jsonb_build_object('schedule', name) FROM d"
    ") SELECT name FROM d";

inline constexpr std::string_view kDue =
    "SELECT name, cron, timezone, every_us, overlap, catch_up, paused, "
    RUNNER_US("created_at") ", " RUNNER_US("next_run_at") ", task_row->>'secrets_sealed'"
    " FROM schedules WHERE next_run_at <= " RUNNER_AT("$1")
    " ORDER BY next_run_at LIMIT $2";

inline constexpr std::string_view kEarliestNext =
    "SELECT " RUNNER_US("min(next_run_at)") " FROM schedules";

// The schedule's sealed secrets (hex, sealed for the schedule; NULL: none).
inline constexpr std::string_view kScheduleSecrets =
    "SELECT task_row->>'secrets_sealed' FROM schedules WHERE name = $1";

// A manual run: a task now, no overlap check. $1 name, $2 task id, $3 now (us),
// $4 the task's sealed secrets (hex or NULL).
inline constexpr std::string_view kTrigger =
    "WITH s AS ("
    "  UPDATE schedules SET last_task_id = $2 WHERE name = $1 RETURNING name, task_row"
    "), ins AS (" RUNNER_INSERT_SCHEDULED("$2", "NULL", RUNNER_AT("$3"), "$4::text")
    "  RETURNING t.id, t.queue"
    "), ev AS ("
    "  INSERT INTO events (kind, task_id, data)"
    "  SELECT 'task.queued', id, jsonb_build_object('queue', queue) FROM ins"
    "  UNION ALL SELECT 'schedule.fired', id, jsonb_build_object('schedule', $1::text,"
    "    'slot', " RUNNER_AT("$3") ", 'trigger', true) FROM ins"
    "), nt AS MATERIALIZED ("
    "  SELECT count(pg_notify('runner_tasks', queue)) AS n FROM ins"
    ") SELECT ins.id FROM ins, nt";

// One fire step (schedule_store.h FireStep), one statement, atomic: $1 name,
// $2 expected next_run_at, $3 slot (NULL: only move), $4 next (NULL: never),
// $5 the new task's id, $6 slots missed, $7 the new task's sealed secrets
// (hex or NULL). The UPDATE's guard on next_run_at
// makes a second node's step for the same slot write nothing. Overlap
// `cancel_previous` cancels the schedule's queued tasks and asks its running
// ones to stop (pg_notify runner_cancel), in the same statement. Returns one
// row: steps moved (0 or 1), skipped by overlap, the new task id, cancelled.
inline constexpr std::string_view kFire =
    "WITH live AS ("
    "  SELECT count(*) AS n FROM tasks"
    "  WHERE schedule = $1 AND state IN ('queued', 'running')"
    "), s AS ("
    "  UPDATE schedules sc SET next_run_at = " RUNNER_AT("$4") ","
    "    last_run_at = CASE WHEN " RUNNER_FIRES("sc") " THEN " RUNNER_AT("$3")
    "                  ELSE sc.last_run_at END,"
    "    last_task_id = CASE WHEN " RUNNER_FIRES("sc") " THEN $5 ELSE sc.last_task_id END"
    "  FROM live WHERE sc.name = $1 AND sc.next_run_at = " RUNNER_AT("$2")
    "  RETURNING sc.name, sc.task_row, sc.overlap, " RUNNER_FIRES("sc") " AS fired,"
    "    ($3::bigint IS NOT NULL AND NOT sc.paused AND NOT " RUNNER_FIRES("sc") ") AS skipped"
    "), ins AS (" RUNNER_INSERT_SCHEDULED("$5",
        "'schedule:' || $1::text || ':' || to_char(" RUNNER_AT("$3")
        " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", RUNNER_AT("$3"),
        "$7::text")
    "  WHERE s.fired ON CONFLICT (idempotency_key) DO NOTHING RETURNING t.id, t.queue"
    "), cq AS ("
    "  UPDATE tasks t SET state = 'cancelled', finished_at = now(),"
    "    error = '{\"code\":\"cancelled\",\"message\":\"cancelled by its schedule: a newer slot"
    " started (overlap cancel_previous)\"}'"
    "  FROM s WHERE s.fired AND s.overlap = 'cancel_previous' AND t.schedule = $1"
    "    AND t.state = 'queued' RETURNING t.id"
    "), cr AS ("
    "  UPDATE tasks t SET cancel_requested = true"
    "  FROM s WHERE s.fired AND s.overlap = 'cancel_previous' AND t.schedule = $1"
    "    AND t.state = 'running' RETURNING t.id"
    "), ev AS ("
    "  INSERT INTO events (kind, task_id, data)"
    "  SELECT 'task.queued', id, jsonb_build_object('queue', queue) FROM ins"
    "  UNION ALL SELECT 'schedule.fired', id, jsonb_build_object('schedule', $1::text,"
    "    'slot', " RUNNER_AT("$3") ") FROM ins"
    "  UNION ALL SELECT 'schedule.skipped', NULL, jsonb_build_object('schedule', $1::text,"
    "    'slot', " RUNNER_AT("$3") ", 'reason', 'overlap') FROM s WHERE s.skipped"
    "  UNION ALL SELECT 'schedule.skipped', NULL, jsonb_build_object('schedule', $1::text,"
    "    'reason', 'missed', 'missed', $6::int) FROM s WHERE $6::int > 0"
    "  UNION ALL SELECT 'task.cancelled', id, '{\"reason\":\"schedule_overlap\"}'::jsonb FROM cq"
    "), nt AS MATERIALIZED ("
    "  SELECT count(pg_notify('runner_tasks', queue)) AS n FROM ins"
    "), nc AS MATERIALIZED ("
    "  SELECT count(pg_notify('runner_cancel', id)) AS n FROM cr"
    ") SELECT (SELECT count(*) FROM s), coalesce((SELECT bool_or(skipped) FROM s), false),"
    "  (SELECT id FROM ins), (SELECT count(*) FROM cq) + nc.n FROM nt, nc";

#undef RUNNER_FIRES
#undef RUNNER_INSERT_SCHEDULED
#undef RUNNER_SCHEDULE_COLUMNS
#undef RUNNER_US
#undef RUNNER_AT

}  // namespace runner::schedule::sql
