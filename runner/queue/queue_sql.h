#pragma once

// The SQL of the PostgreSQL queue, as named constants. Each statement in
// kPrepared is prepared once per pooled connection. Times leave the database
// as microseconds since the epoch (exact, no text parsing). Text arrays are
// passed as array literals ($n::text[]) built with escaping.
//
// Internal to runner/queue (postgres_store.cpp and the benchmark's raw-SQL path).

#include <array>
#include <string_view>

namespace runner::queue::sql {

struct Statement {
  const char* name;
  std::string_view text;
};

// The planner settings of every store connection.
// - Generic plans: every prepared statement is a lookup by key or a walk of
//   an index in its order, whose best plan does not depend on the values.
//   Left on "auto", PostgreSQL re-plans the claim on every call (its LIMIT $5
//   makes the generic plan look dear): 0.3 ms of 0.5.
// - No sort where an index gives the order: the claim must walk
//   tasks_claim_idx and stop after LIMIT rows. When the statistics say few
//   tasks are queued (a fresh database, or a burst into a table of finished
//   tasks, until autovacuum analyzes it), the planner instead scans every
//   queued task and sorts them: 12 ms a claim at 20,000 queued instead of
//   0.3, and the plan stays cached. Every other ordered read here has an
//   index in its order too; sorts with no alternative still run.
// - No JIT: the queue's statements take well under a millisecond, and the
//   cost penalty of a sort that must still run (above) would otherwise
//   trigger JIT compilation: 480 ms a claim.
inline constexpr std::string_view kSessionPlanSettings =
    "SET plan_cache_mode = force_generic_plan; SET enable_sort = off; SET jit = off";

#define RUNNER_US(col) "(extract(epoch FROM " col ") * 1000000)::bigint"
// Column order is RowToTask's.
// clang-format off
#define RUNNER_TASK_COLUMNS                                                             \
  "t.id, t.state, t.queue, t.priority, to_jsonb(t.command)::text, t.image, "            \
  "t.isolation, t.isolation_used, t.env::text, t.limits::text, t.timeout, t.attempt, "  \
  "t.max_attempts, t.backoff, to_jsonb(t.depends_on)::text, t.idempotency_key, "        \
  "t.labels::text, t.lease_owner, t.node_id, t.exit_code, t.error::text, "              \
  "t.usage::text, "                                                                     \
  RUNNER_US("t.created_at") ", " RUNNER_US("t.run_at") ", "                             \
  RUNNER_US("t.started_at") ", " RUNNER_US("t.finished_at") ", "                        \
  RUNNER_US("t.lease_expires_at") ", "                                                  \
  "t.cancel_requested, t.stdout_tail, t.stderr_tail, t.logs_truncated, "                \
  "t.schedule, " RUNNER_US("t.scheduled_for") ", t.\"group\", to_jsonb(t.secret_names)::text"
// The sealed secrets, as hex, after RUNNER_TASK_COLUMNS in the claims only: no
// other read carries them out of the database.
#define RUNNER_SEALED_SECRETS_COLUMN "encode(t.secrets_sealed, 'hex')"
// clang-format on

inline constexpr std::string_view kTaskColumns = RUNNER_TASK_COLUMNS;

inline constexpr Statement kTaskById{"task_by_id",
                                     "SELECT " RUNNER_TASK_COLUMNS " FROM tasks t WHERE t.id = $1"};

inline constexpr Statement kTaskByKey{
    "task_by_key", "SELECT " RUNNER_TASK_COLUMNS " FROM tasks t WHERE t.idempotency_key = $1"};

// Marks the dependencies (so Finish looks for dependents only when there are
// some) and locks them until the new task commits.
inline constexpr Statement kLockDependencies{
    "lock_dependencies",
    "UPDATE tasks SET has_dependents = true WHERE id = ANY($1::text[]) RETURNING id, state"};

inline constexpr Statement kInsertTask{
    "insert_task",
    "INSERT INTO tasks AS t (id, queue, state, priority, run_at, max_attempts, backoff, "
    "isolation, image, command, env, limits, timeout, depends_on, idempotency_key, labels, "
    "error, finished_at, \"group\", secret_names, secrets_sealed) VALUES ($1, $2, $3::text, $4, "
    "now() + $5::float8 * interval '1 second', "
    "$6, $7, $8, $9, $10::text[], $11::jsonb, $12::jsonb, $13, $14::text[], $15, $16::jsonb, "
    "$17::jsonb, CASE WHEN $3::text = 'queued' THEN NULL ELSE now() END, $18, $19::text[], "
    "decode($20, 'hex')) "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING " RUNNER_TASK_COLUMNS};

// Submit of tasks without dependencies, any number, in one statement (one
// round trip, autocommit): $1 is a JSON array of objects with the columns of
// kInsertTask (id made by the caller, command a JSON array, defaults already
// applied). Each inserted task gets its task.queued event, and each queue one
// pg_notify, delivered at commit. A task whose idempotency_key exists is
// skipped (no row back for it): the caller looks it up with kTasksByKeys.
inline constexpr Statement kInsertTasks{
    "insert_tasks",
    "WITH input AS ("
    "  SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id text, queue text, priority integer,"
    "    delay float8, max_attempts integer, backoff float8, isolation text, image text,"
    "    command jsonb, env jsonb, limits jsonb, timeout float8, idempotency_key text, labels "
    "jsonb, \"group\" text, secret_names jsonb, secrets_sealed text)"
    "), ins AS ("
    "  INSERT INTO tasks AS t (id, queue, state, priority, run_at, max_attempts, backoff, "
    "    isolation, image, command, env, limits, timeout, idempotency_key, labels, \"group\", "
    "    secret_names, secrets_sealed)"
    "  SELECT id, queue, 'queued', priority, now() + delay * interval '1 second', max_attempts,"
    "    backoff, isolation, image,"
    "    ARRAY(SELECT a.e FROM jsonb_array_elements_text(command) WITH ORDINALITY AS a(e, n)"
    "          ORDER BY a.n),"
    "    env, limits, timeout, idempotency_key, labels, \"group\","
    "    ARRAY(SELECT jsonb_array_elements_text(coalesce(secret_names, '[]'))),"
    "    decode(secrets_sealed, 'hex')"
    "  FROM input"
    "  ON CONFLICT (idempotency_key) DO NOTHING RETURNING t.*"
    "), ev AS ("
    "  INSERT INTO events (kind, task_id, data)"
    "  SELECT 'task.queued', ins.id, jsonb_build_object('queue', ins.queue) FROM ins"
    "), nt AS MATERIALIZED ("
    "  SELECT count(pg_notify('runner_tasks', q.queue)) FROM (SELECT DISTINCT queue FROM ins) q"
    ") SELECT " RUNNER_TASK_COLUMNS " FROM ins t, nt"};

inline constexpr Statement kTasksByKeys{"tasks_by_keys",
                                        "SELECT " RUNNER_TASK_COLUMNS
                                        " FROM tasks t WHERE t.idempotency_key = ANY($1::text[])"};

inline constexpr Statement kInsertEvent{
    "insert_event",
    "INSERT INTO events (kind, task_id, worker_id, data) VALUES ($1, $2, $3, $4::jsonb)"};

inline constexpr Statement kNotifyTasks{"notify_tasks", "SELECT pg_notify('runner_tasks', $1)"};

// What both claims (kClaim, kFinishAndClaim) share, so they cannot drift:
// RUNNER_CLAIMABLE selects runnable queued tasks in claim order (priority
// desc, run_at, id; dependencies all succeeded), locked with SKIP LOCKED;
// `queues` is a text[] parameter (NULL: all), `skip` a text[] of isolations
// the claiming node cannot run now (NULL or empty: none; such tasks wait for
// a node that can). RUNNER_CLAIM_SET is the update
// that starts a task from candidate row `p` (a capped one takes its run slot
// and spends its rate ring row: queue_policy_schema.h, v5),
// RUNNER_STARTED_EVENTS the events of CTE "claimed".
// clang-format off
#define RUNNER_CLAIMABLE(columns, queues, limit, skip) \
  "SELECT " columns " FROM tasks q" \
  "  WHERE q.state = 'queued' AND q.run_at <= now()" \
  "    AND (" queues "::text[] IS NULL OR q.queue = ANY(" queues "::text[]))" \
  "    AND NOT q.capped AND q.isolation <> ALL(coalesce(" skip "::text[], '{}'))" \
  "    AND (q.depends_on = '{}' OR NOT EXISTS (" \
  "          SELECT 1 FROM tasks d WHERE d.id = ANY(q.depends_on)" \
  "          AND d.state <> 'succeeded'))" \
  "  ORDER BY q.priority DESC, q.fair_seq, q.run_at, q.id" \
  "  LIMIT " limit " FOR UPDATE OF q SKIP LOCKED"
#define RUNNER_CLAIM_SET(owner, node, lease_ms) \
  "state = 'running', attempt = t.attempt + 1, lease_owner = " owner ", node_id = " node "," \
  "  lease_expires_at = now() + " lease_ms "::bigint * interval '1 millisecond'," \
  "  started_at = CASE WHEN p.rate_slot IS NULL THEN coalesce(p.started, now())" \
  "    ELSE runner_rate_spend(t.queue, p.rate_slot, p.started) END, cap_slot = p.cap_slot"
#define RUNNER_STARTED_EVENTS \
  "INSERT INTO events (kind, task_id, worker_id, data)" \
  "  SELECT 'task.started', t.id, t.lease_owner," \
  "         jsonb_build_object('attempt', t.attempt, 'node_id', t.node_id) FROM claimed t"
// The claim candidates: the fast path (tasks_claim_idx, uncapped queues) and
// the capped queues' (runner_claim_capped, only called when some queue has a
// policy), as (id, priority, fair_seq, run_at, started, cap_slot, rate_slot):
// the run slot and the rate ring row a capped candidate takes if started.
#define RUNNER_CANDIDATES(queues, limit, skip, exclude) \
  "SELECT * FROM (" RUNNER_CLAIMABLE("q.id, q.priority, q.fair_seq, q.run_at," \
                                      " NULL::timestamptz AS started, NULL::integer AS cap_slot," \
                                      " NULL::integer AS rate_slot", queues, limit, skip) ") f" \
  " UNION ALL SELECT * FROM runner_claim_capped(" queues "::text[], " skip "::text[], " \
  limit "::integer, " exclude ") WHERE EXISTS (SELECT 1 FROM queue_policies)"
// clang-format on

// Batch claim: the idle workers are numbered, the runnable tasks are numbered
// in claim order, and task n goes to worker n. SKIP LOCKED lets claimers pass
// each other; the row lock makes a task go to one claimer only.
inline constexpr Statement kClaim{
    "claim",
    "WITH w AS ("
    "  SELECT wid, ord FROM unnest($1::text[]) WITH ORDINALITY AS u(wid, ord)"
    "), picked AS ("
    "  SELECT c.id, c.started, c.cap_slot, c.rate_slot,"
    "    row_number() OVER (ORDER BY c.priority DESC, c.fair_seq, c.run_at, c.id) AS ord"
    "  FROM (" RUNNER_CANDIDATES("$4", "$5", "$6", "NULL") ") c"
    "), claimed AS ("
    "  UPDATE tasks t SET " RUNNER_CLAIM_SET("w.wid", "$2", "$3")
    "  FROM picked p JOIN w ON w.ord = p.ord"
    "  WHERE t.id = p.id"
    "  RETURNING t.*"
    "), ev AS (" RUNNER_STARTED_EVENTS
    ") SELECT " RUNNER_TASK_COLUMNS ", " RUNNER_SEALED_SECRETS_COLUMN
    " FROM claimed t ORDER BY t.priority DESC, t.fair_seq, t.run_at, t.id"};

// Lookups of running tasks by id lock the rows by primary key alone in a
// MATERIALIZED "lk" step and check state and lease owner on what it returns.
// Written as one WHERE (id = $1 AND state = 'running' ...), the planner, whose
// statistics see few running rows, picks the (state, created_at, id) or the
// running-lease index and walks every running and recently finished entry:
// finish went from 0.25 ms to over 1 ms as dead entries piled up.
//
// Lease renewal of all of a node's running tasks, worker and node heartbeats,
// in one statement. Returns the task ids that could not be renewed.
inline constexpr Statement kHeartbeat{
    "heartbeat",
    "WITH b AS ("
    "  SELECT * FROM unnest($2::text[], $3::text[], $4::text[]) AS u(worker_id, state, task_id)"
    "), lk AS MATERIALIZED ("
    "  SELECT id, state, lease_owner FROM tasks WHERE id = ANY($4::text[]) FOR NO KEY UPDATE"
    "), renewed AS ("
    "  UPDATE tasks t SET lease_expires_at = now() + $5::bigint * interval '1 millisecond'"
    "  FROM lk JOIN b ON b.task_id = lk.id"
    "  WHERE t.id = lk.id AND lk.state = 'running' AND lk.lease_owner = b.worker_id"
    "  RETURNING t.id"
    "), wk AS ("
    "  INSERT INTO workers AS x (id, node_id, state, current_task)"
    "  SELECT worker_id, $1, state, task_id FROM b"
    "  ON CONFLICT (id) DO UPDATE SET node_id = excluded.node_id, state = excluded.state,"
    "    current_task = excluded.current_task, heartbeat_at = now()"
    "), nd AS ("
    "  INSERT INTO nodes AS n (id, target) VALUES ($1, $6)"
    "  ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), target = excluded.target,"
    "    dead_at = NULL"
    ") SELECT b.task_id FROM b WHERE b.task_id IS NOT NULL"
    "  AND NOT EXISTS (SELECT 1 FROM renewed r WHERE r.id = b.task_id)"};

// The finish of kFinish and kFinishAndClaim: CTEs lk, cur, u (the finished
// or retried row) and ev (its event). $1-$9 as documented at kFinish.
// clang-format off
#define RUNNER_FINISH_CTES \
  "WITH lk AS MATERIALIZED (" \
  "  SELECT id, state, lease_owner, attempt, max_attempts, backoff, has_dependents" \
  "  FROM tasks WHERE id = $1 FOR NO KEY UPDATE" \
  "), cur AS (" \
  "  SELECT id, attempt, max_attempts, backoff, has_dependents," \
  "    ($3::text IN ('failed', 'timed_out') AND $8::bool AND attempt < max_attempts) AS retry" \
  "  FROM lk WHERE state = 'running' AND lease_owner = $2" \
  "), u AS (" \
  "  UPDATE tasks t SET" \
  "    state = CASE WHEN c.retry THEN 'queued' ELSE $3::text END," \
  "    run_at = CASE WHEN c.retry THEN now() + least($9::float8," \
  "               c.backoff * power(2, greatest(c.attempt - 1, 0))) * interval '1 second'" \
  "             ELSE t.run_at END," \
  "    lease_owner = CASE WHEN c.retry THEN NULL ELSE t.lease_owner END," \
  "    node_id = CASE WHEN c.retry THEN NULL ELSE t.node_id END," \
  "    finished_at = CASE WHEN c.retry THEN NULL ELSE now() END," \
  "    lease_expires_at = NULL, exit_code = $4::int, error = $5::jsonb, usage = $6::jsonb," \
  "    isolation_used = $7" \
  "  FROM cur c WHERE t.id = c.id" \
  "  RETURNING t.id, t.state, t.attempt, c.retry, c.has_dependents" \
  "), ev AS (" \
  "  INSERT INTO events (kind, task_id, worker_id, data)" \
  "  SELECT CASE WHEN u.retry THEN 'task.retrying' ELSE 'task.' || u.state END, u.id, $2," \
  "         jsonb_build_object('attempt', u.attempt, 'exit_code', $4::int," \
  "                            'error', $5::jsonb->>'code') FROM u"
// clang-format on

// Finish in one statement (autocommit, one round trip): checks that the worker
// still holds the lease of the running task, then either writes the final
// state or, for a retryable failure with attempts left, queues it again after
// backoff * 2^(attempt-1) seconds (capped at $9), with the matching event.
// No row back: the lease was not held and nothing was written.
// $1 id, $2 worker, $3 state, $4 exit_code, $5 error, $6 usage, $7 isolation_used,
// $8 retryable, $9 max delay.
// A capped queue's task ended: its slot is free now; the claimers are woken
// when one may be waiting for it, i.e. while the queue's waiting_until (set by
// a claim a cap held back) is ahead. Read FOR SHARE: a claim setting it either
// waits for this finish to commit (and then sees the slot free) or commits
// first (and this finish sees it). See capped_claim_schema.h, v7.
inline constexpr Statement kFinish{
    "finish", RUNNER_FINISH_CTES
    "), wt AS MATERIALIZED ("
    "  SELECT p.queue, p.waiting_until FROM queue_policies p JOIN tasks t ON t.queue = p.queue"
    "  JOIN u ON u.id = t.id WHERE t.capped FOR SHARE OF p"
    "), nt AS MATERIALIZED ("
    "  SELECT count(pg_notify('runner_tasks', wt.queue)) AS n FROM wt"
    "  WHERE wt.waiting_until > clock_timestamp()"
    ") SELECT u.retry, u.has_dependents, nt.n FROM u, nt"};

// kFinish, then the claim of one task for the same worker ($2), in one
// statement: $10 node, $11 lease ms, $12 queues (NULL: all), $13 isolations
// to skip (NULL: none). Always one row:
// the claimed task's columns (NULL id: nothing to claim), then retry,
// has_dependents and whether the finish was written (false: lease lost). The
// claim reads the snapshot from before the finish, so it cannot take the
// task being finished, nor a dependent this finish unblocks.
inline constexpr Statement kFinishAndClaim{
    "finish_and_claim", RUNNER_FINISH_CTES
    "), picked AS ("
    "  SELECT c.id, c.started, c.cap_slot, c.rate_slot FROM (" RUNNER_CANDIDATES("$12", "1", "$13", "$1") ") c"
    "  ORDER BY c.priority DESC, c.fair_seq, c.run_at, c.id LIMIT 1"
    "), claimed AS ("
    "  UPDATE tasks t SET " RUNNER_CLAIM_SET("$2", "$10", "$11")
    "  FROM picked p WHERE t.id = p.id"
    "  RETURNING t.*"
    "), cev AS (" RUNNER_STARTED_EVENTS
    ") SELECT " RUNNER_TASK_COLUMNS ", " RUNNER_SEALED_SECRETS_COLUMN
    ", f.retry, f.has_dependents, f.id IS NOT NULL"
    "  FROM (SELECT 1) one LEFT JOIN u f ON true LEFT JOIN claimed t ON true"};

// A task succeeded: wake the claimers of the queues its dependents wait in.
inline constexpr Statement kWakeDependents{
    "wake_dependents",
    "SELECT pg_notify('runner_tasks', q.queue) FROM ("
    "  SELECT DISTINCT d.queue FROM tasks d"
    "  WHERE d.state = 'queued' AND d.depends_on @> ARRAY[$1::text]) q"};

// Transitively fails the queued dependents of a task that ended for good
// without succeeding ($2: how it ended).
inline constexpr Statement kFailDependents{
    "fail_dependents",
    "WITH RECURSIVE dep(id) AS ("
    "  SELECT t.id FROM tasks t WHERE t.state = 'queued' AND t.depends_on @> ARRAY[$1::text]"
    "  UNION"
    "  SELECT t.id FROM tasks t JOIN dep ON t.depends_on @> ARRAY[dep.id]"
    "  WHERE t.state = 'queued'"
    "), upd AS ("
    "  UPDATE tasks t SET state = 'failed', finished_at = now(),"
    "    error = jsonb_build_object('code', 'dependency_failed', 'message',"
    "            'dependency ' || $1::text || ' ended ' || $2::text)"
    "  FROM dep WHERE t.id = dep.id AND t.state = 'queued' RETURNING t.id"
    ") INSERT INTO events (kind, task_id, data)"
    "  SELECT 'task.failed', upd.id, jsonb_build_object('error', 'dependency_failed',"
    "         'dependency', $1::text) FROM upd"};

inline constexpr Statement kLockTask{"lock_task",
                                     "SELECT state, queue FROM tasks WHERE id = $1 FOR UPDATE"};

// The two cancel statements run after kLockTask in the same transaction: the
// row is locked and its state checked, so they look it up by id alone.
inline constexpr Statement kCancelQueued{
    "cancel_queued",
    "WITH u AS ("
    "  UPDATE tasks SET state = 'cancelled', finished_at = now(),"
    "    error = '{\"code\":\"cancelled\",\"message\":\"cancelled before it ran\"}'"
    "  WHERE id = $1 RETURNING id"
    ") INSERT INTO events (kind, task_id, data) SELECT 'task.cancelled', id, '{}' FROM u"};

inline constexpr Statement kRequestCancel{
    "request_cancel",
    "WITH u AS ("
    "  UPDATE tasks SET cancel_requested = true WHERE id = $1 RETURNING id"
    ") SELECT pg_notify('runner_cancel', id) FROM u"};

// Back to the queue with the attempt given back: $1 id, $2 worker (must hold
// the lease), $3 delay in ms before it may run again, $4 why (a TaskError as
// JSON, kept as the task's error; NULL for a plain release). The event says
// `released`, or `deferred` with the error. A task whose cancel was requested
// while running ends cancelled rather than going back to the queue.
inline constexpr Statement kRelease{
    "release",
    "WITH lk AS MATERIALIZED ("
    "  SELECT id, state, lease_owner FROM tasks WHERE id = $1 FOR NO KEY UPDATE"
    "), r AS ("
    "  UPDATE tasks t SET"
    "    state = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'queued' END,"
    "    finished_at = CASE WHEN t.cancel_requested THEN now() END,"
    "    attempt = greatest(t.attempt - 1, 0), lease_owner = NULL, lease_expires_at = NULL,"
    "    node_id = NULL, started_at = NULL,"
    "    run_at = now() + $3::bigint * interval '1 millisecond',"
    "    error = coalesce($4::jsonb, t.error)"
    "  FROM lk WHERE t.id = lk.id AND lk.lease_owner = $2 AND lk.state = 'running'"
    "  RETURNING t.id, t.queue, t.state"
    "), ev AS ("
    "  INSERT INTO events (kind, task_id, worker_id, data)"
    "  SELECT 'task.' || r.state, r.id, $2,"
    "    CASE WHEN $4::jsonb IS NULL THEN '{\"reason\":\"released\"}'::jsonb"
    "    ELSE jsonb_build_object('reason', 'deferred', 'error', $4::jsonb->>'code',"
    "                            'message', $4::jsonb->>'message', 'delay_ms', $3::bigint)"
    "    END FROM r"
    ") SELECT r.id, pg_notify('runner_tasks', r.queue) FROM r"};

inline constexpr Statement kCancelRequested{
    "cancel_requested", "SELECT id FROM tasks WHERE id = ANY($1::text[]) AND cancel_requested"};

inline constexpr Statement kLockLogState{
    "lock_log_state",
    "SELECT log_bytes, log_seq, logs_truncated, stdout_tail, stderr_tail FROM tasks"
    " WHERE id = $1 FOR UPDATE"};

inline constexpr Statement kInsertLog{
    "insert_log", "INSERT INTO task_logs (task_id, seq, stream, data) VALUES ($1, $2, $3, $4)"};

inline constexpr Statement kUpdateLogState{
    "update_log_state",
    "UPDATE tasks SET log_bytes = $2, log_seq = $3, logs_truncated = $4, stdout_tail = $5,"
    " stderr_tail = $6 WHERE id = $1"};

inline constexpr Statement kLogState{"log_state", "SELECT logs_truncated FROM tasks WHERE id = $1"};

inline constexpr Statement kLogChunks{
    "log_chunks",
    "SELECT seq, stream, data FROM task_logs WHERE task_id = $1 AND seq > $2"
    " AND ($3::smallint IS NULL OR stream = $3::smallint) ORDER BY seq LIMIT $4"};

// Live states from their partial indexes, final states from the sharded
// counters the trigger keeps: never a scan of the task history.
inline constexpr Statement kCounts{
    "counts",
    "SELECT 'queued', count(*) FROM tasks WHERE state = 'queued'"
    " UNION ALL SELECT 'running', count(*) FROM tasks WHERE state = 'running'"
    " UNION ALL SELECT state, sum(n)::bigint FROM task_final_counts GROUP BY state"};

// The task list is built from the filters present (PostgresStore::List): the
// store's connections use generic plans (plan_cache_mode = force_generic_plan),
// and a generic plan of "($1 IS NULL OR state = $1)" cannot use the index of
// the filter.
inline constexpr std::string_view kListTasksSelect = "SELECT " RUNNER_TASK_COLUMNS " FROM tasks t";
inline constexpr std::string_view kListTasksOrder = " ORDER BY t.created_at DESC, t.id DESC";

inline constexpr Statement kUpsertNode{
    "upsert_node",
    "INSERT INTO nodes (id, host, pid, mode, target) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
    " mode = excluded.mode, target = excluded.target, heartbeat_at = now(), dead_at = NULL"};

inline constexpr Statement kDeleteNodeWorkers{"delete_node_workers",
                                              "DELETE FROM workers WHERE node_id = $1"};
inline constexpr Statement kDeleteNode{"delete_node", "DELETE FROM nodes WHERE id = $1"};

inline constexpr Statement kUpsertWorker{
    "upsert_worker",
    "INSERT INTO workers (id, node_id, state, current_task) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (id) DO UPDATE SET node_id = excluded.node_id, state = excluded.state,"
    " current_task = excluded.current_task, heartbeat_at = now()"};

inline constexpr Statement kDeleteWorker{"delete_worker", "DELETE FROM workers WHERE id = $1"};

inline constexpr Statement kListWorkers{
    "list_workers",
    "SELECT w.id, w.node_id, w.state, w.current_task, " RUNNER_US("w.started_at") ", " RUNNER_US(
        "w.heartbeat_at") " FROM workers w LEFT JOIN nodes n ON n.id = w.node_id"
                          " WHERE n.dead_at IS NULL ORDER BY w.node_id, w.started_at, w.id"};

inline constexpr Statement kListNodes{
    "list_nodes", "SELECT id, host, pid, mode, target, " RUNNER_US(
                      "heartbeat_at") " FROM nodes WHERE dead_at IS NULL ORDER BY id"};

inline constexpr Statement kDeadNodes{
    "dead_nodes",
    "SELECT id FROM nodes WHERE dead_at IS NOT NULL"
    " OR heartbeat_at < now() - $1::bigint * interval '1 millisecond' ORDER BY id"};

inline constexpr Statement kEventsAfter{
    "events_after",
    "SELECT id, " RUNNER_US("at") ", kind, task_id, worker_id, data::text FROM events"
                                  " WHERE id > $1 ORDER BY id LIMIT $2"};

inline constexpr Statement kTryReaperLock{"try_reaper_lock",
                                          "SELECT pg_try_advisory_xact_lock($1::bigint)"};

// Expired leases: back to the queue while attempts remain, else failed with
// lease_lost (cancelled when a cancel was pending). Locked rows are skipped: a
// worker finishing right now wins, and the next pass sees the outcome.
inline constexpr Statement kReapExpired{
    "reap_expired",
    "WITH expired AS ("
    "  SELECT id FROM tasks WHERE state = 'running' AND lease_expires_at < now()"
    "  FOR UPDATE SKIP LOCKED"
    "), requeued AS ("
    "  UPDATE tasks t SET state = 'queued', run_at = now(), lease_owner = NULL,"
    "    lease_expires_at = NULL, node_id = NULL,"
    "    error = '{\"code\":\"lease_lost\",\"message\":\"the worker stopped renewing its lease\"}'"
    "  FROM expired e WHERE t.id = e.id AND t.attempt < t.max_attempts AND NOT t.cancel_requested"
    "  RETURNING t.id, t.queue, t.attempt"
    "), failed AS ("
    "  UPDATE tasks t SET"
    "    state = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'failed' END,"
    "    finished_at = now(), lease_expires_at = NULL,"
    "    error = '{\"code\":\"lease_lost\",\"message\":\"the worker stopped renewing its lease\"}'"
    "  FROM expired e WHERE t.id = e.id"
    "    AND (t.attempt >= t.max_attempts OR t.cancel_requested)"
    "  RETURNING t.id, t.state"
    "), ev AS ("
    "  INSERT INTO events (kind, task_id, data)"
    "  SELECT 'task.retrying', id, jsonb_build_object('attempt', attempt, 'error', 'lease_lost')"
    "  FROM requeued"
    "  UNION ALL SELECT 'task.' || state, id, '{\"error\":\"lease_lost\"}' FROM failed"
    ") SELECT 'requeued', id, queue FROM requeued"
    "  UNION ALL SELECT 'failed', id, NULL FROM failed"};

// Safety net: queued tasks waiting on a dependency that ended without
// succeeding (Finish fails dependents right after its own statement; a crash
// in between leaves them here).
inline constexpr Statement kOrphanedDependents{
    "orphaned_dependents",
    "SELECT DISTINCT d.id, d.state FROM tasks q JOIN tasks d ON d.id = ANY(q.depends_on)"
    " WHERE q.state = 'queued' AND q.depends_on <> '{}'"
    " AND d.state IN ('failed', 'cancelled', 'timed_out') LIMIT 100"};

inline constexpr Statement kReapWorkers{
    "reap_workers",
    "DELETE FROM workers w WHERE w.heartbeat_at < now() - $1::bigint * interval '1 millisecond'"
    " OR EXISTS (SELECT 1 FROM nodes n WHERE n.id = w.node_id AND n.dead_at IS NOT NULL)"};

inline constexpr Statement kReapNodes{
    "reap_nodes",
    "UPDATE nodes SET dead_at = now() WHERE dead_at IS NULL"
    " AND heartbeat_at < now() - $1::bigint * interval '1 millisecond'"};

inline constexpr Statement kForgetDeadNodes{
    "forget_dead_nodes",
    "DELETE FROM nodes WHERE dead_at < now() - $1::bigint * interval '1 second'"};

// Batched so one pass holds its locks briefly; the next pass continues.
inline constexpr Statement kDeleteOldTasks{
    "delete_old_tasks",
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks"
    " WHERE finished_at < now() - $1::bigint * interval '1 second'"
    " AND state NOT IN ('queued', 'running') LIMIT 5000)"};

inline constexpr Statement kDeleteOldEvents{
    "delete_old_events",
    "DELETE FROM events WHERE id IN (SELECT id FROM events"
    " WHERE at < now() - $1::bigint * interval '1 second' LIMIT 50000)"};

inline constexpr std::array kPrepared = {
    kTaskById,       kTaskByKey,          kLockDependencies, kInsertTask,      kInsertEvent,
    kInsertTasks,    kTasksByKeys,        kNotifyTasks,      kClaim,           kHeartbeat,
    kFinish,         kFinishAndClaim,     kFailDependents,   kWakeDependents,  kLockTask,
    kCancelQueued,   kRequestCancel,      kRelease,          kCancelRequested, kLockLogState,
    kInsertLog,      kUpdateLogState,     kLogState,         kLogChunks,       kCounts,
    kUpsertNode,     kDeleteNodeWorkers,  kDeleteNode,       kUpsertWorker,    kDeleteWorker,
    kListWorkers,    kListNodes,          kDeadNodes,        kEventsAfter,     kTryReaperLock,
    kReapExpired,    kOrphanedDependents, kReapWorkers,      kReapNodes,       kForgetDeadNodes,
    kDeleteOldTasks, kDeleteOldEvents};

#undef RUNNER_CLAIMABLE
#undef RUNNER_CANDIDATES
#undef RUNNER_CLAIM_SET
#undef RUNNER_STARTED_EVENTS
#undef RUNNER_FINISH_CTES
#undef RUNNER_TASK_COLUMNS
#undef RUNNER_US

}  // namespace runner::queue::sql
