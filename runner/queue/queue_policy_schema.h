#pragma once

// Migration v2 (issue #18): task groups, fair order between groups, and the
// per-queue policies (caps, rate limit, pause) the claim enforces.
//
// - tasks."group": NULL is the queue's unnamed group.
// - tasks.fair_seq: the claim order within a priority is (fair_seq, run_at,
//   id). A group's next task gets max(its last queued fair_seq + 1, the claim
//   head), so each group's n-th waiting task comes before any group's
//   (n+1)-th: round-robin between the groups with work. A BEFORE trigger sets
//   it (it sees the rows a bulk insert already wrote), so the inserts need
//   not change.
// - tasks.capped: the task's queue has a policy with a cap or pause. Capped
//   tasks leave the claim index (tasks_claim_idx) for tasks_capped_idx, so
//   the fast claim never walks a blocked backlog; they are claimed by
//   runner_claim_capped, which holds the queue's policy row locked while it
//   counts. The same trigger sets it on insert and on every return to
//   'queued', under a shared advisory lock of the queue that the policy
//   writer takes exclusively: a policy write and a task entering the queue
//   cannot miss each other.
// - queue_starts: the start times of capped tasks, for the sliding-window
//   rate limit and the starts metric.

#include <string_view>

namespace runner::queue {

// The advisory lock key of a queue's policy (shared by inserts, exclusive by
// the policy writer).
#define RUNNER_POLICY_LOCK(q) "hashtextextended('runner.queue_policy:' || " q ", 0)"

inline constexpr std::string_view kV2QueuePolicies = R"sql(
ALTER TABLE tasks ADD COLUMN "group" text;
ALTER TABLE tasks ADD COLUMN fair_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN capped boolean NOT NULL DEFAULT false;
DROP INDEX tasks_claim_idx;
CREATE INDEX tasks_claim_idx ON tasks (priority DESC, fair_seq, run_at, id)
  WHERE state = 'queued' AND NOT capped;
CREATE INDEX tasks_capped_idx ON tasks (queue, priority DESC, fair_seq, run_at, id)
  WHERE state = 'queued' AND capped;
CREATE INDEX tasks_group_seq_idx ON tasks (queue, (coalesce("group", '')), fair_seq)
  WHERE state = 'queued';
CREATE INDEX tasks_running_queue_idx ON tasks (queue) WHERE state = 'running';
CREATE INDEX tasks_group_list_idx ON tasks ("group", created_at DESC, id DESC)
  WHERE "group" IS NOT NULL;

CREATE TABLE queue_policies (
  queue                 text PRIMARY KEY,
  max_running           integer,
  max_running_per_group integer,
  rate_count            integer,
  rate_per              double precision,
  paused                boolean NOT NULL DEFAULT false,
  updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE queue_starts (
  queue text NOT NULL,
  at    timestamptz NOT NULL
);
CREATE INDEX queue_starts_idx ON queue_starts (queue, at);

CREATE FUNCTION runner_policy_caps(p queue_policies) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
  SELECT p.paused OR p.max_running IS NOT NULL OR p.max_running_per_group IS NOT NULL
         OR p.rate_count IS NOT NULL
$$;

CREATE FUNCTION runner_task_enqueue() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  last_seq bigint;
  head bigint;
BEGIN
  PERFORM pg_advisory_xact_lock_shared()sql" RUNNER_POLICY_LOCK("NEW.queue") R"sql();
  NEW.capped := coalesce((SELECT runner_policy_caps(p) FROM queue_policies p
                          WHERE p.queue = NEW.queue), false);
  IF TG_OP = 'INSERT' THEN
    SELECT t.fair_seq INTO last_seq FROM tasks t
      WHERE t.state = 'queued' AND t.queue = NEW.queue
        AND coalesce(t."group", '') = coalesce(NEW."group", '')
      ORDER BY t.fair_seq DESC LIMIT 1;
    IF NEW.capped THEN
      SELECT t.fair_seq INTO head FROM tasks t
        WHERE t.state = 'queued' AND t.capped AND t.queue = NEW.queue
        ORDER BY t.priority DESC, t.fair_seq, t.run_at, t.id LIMIT 1;
    ELSE
      SELECT t.fair_seq INTO head FROM tasks t
        WHERE t.state = 'queued' AND NOT t.capped
        ORDER BY t.priority DESC, t.fair_seq, t.run_at, t.id LIMIT 1;
    END IF;
    NEW.fair_seq := greatest(coalesce(last_seq + 1, 0), coalesce(head, 0));
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER tasks_enqueue_ins BEFORE INSERT ON tasks FOR EACH ROW
  WHEN (NEW.state = 'queued') EXECUTE FUNCTION runner_task_enqueue();
CREATE TRIGGER tasks_enqueue_upd BEFORE UPDATE OF state ON tasks FOR EACH ROW
  WHEN (NEW.state = 'queued' AND OLD.state <> 'queued') EXECUTE FUNCTION runner_task_enqueue();

-- The capped part of a claim: for each capped, unpaused queue in p_queues
-- with work, lock its policy row (in queue order; a claimer counting it now
-- holds it for one claim, not for a walk of the backlog), count with fresh
-- snapshots what
-- runs and what started in the window, and lock up to p_n tasks that fit,
-- in claim order, skipping groups at their cap. The caller starts any subset
-- of them in the same statement; the policy row stays locked until it
-- commits. p_exclude: the task the calling statement finishes (its slot is
-- free). Returns the start time to record.
CREATE FUNCTION runner_claim_capped(p_queues text[], p_skip text[], p_n integer, p_exclude text)
RETURNS TABLE (id text, priority integer, fair_seq bigint, run_at timestamptz,
               started timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  pol record;
  c record;
  allowed integer;
  n integer;
  taken integer;
  walked integer;
  groups jsonb;
  gn integer;
  t timestamptz;
BEGIN
  IF p_n <= 0 THEN RETURN; END IF;
  FOR pol IN
    SELECT * FROM queue_policies p
    WHERE NOT p.paused AND runner_policy_caps(p)
      AND (p_queues IS NULL OR p.queue = ANY(p_queues))
      AND EXISTS (SELECT 1 FROM tasks q WHERE q.state = 'queued' AND q.capped
                  AND q.queue = p.queue AND q.run_at <= now())
    ORDER BY p.queue FOR UPDATE
  LOOP
    t := clock_timestamp();
    allowed := p_n;
    IF pol.max_running IS NOT NULL THEN
      SELECT count(*) INTO n FROM tasks q
        WHERE q.state = 'running' AND q.queue = pol.queue AND q.id IS DISTINCT FROM p_exclude;
      allowed := least(allowed, pol.max_running - n);
    END IF;
    IF pol.rate_count IS NOT NULL THEN
      DELETE FROM queue_starts s WHERE s.queue = pol.queue
        AND s.at < t - greatest(pol.rate_per, 3600) * interval '1 second';
      SELECT count(*) INTO n FROM queue_starts s
        WHERE s.queue = pol.queue AND s.at > t - pol.rate_per * interval '1 second';
      allowed := least(allowed, pol.rate_count - n);
    END IF;
    CONTINUE WHEN allowed <= 0;
    groups := '{}';
    IF pol.max_running_per_group IS NOT NULL THEN
      SELECT coalesce(jsonb_object_agg(g, k), '{}') INTO groups FROM (
        SELECT coalesce(q."group", '') AS g, count(*) AS k FROM tasks q
        WHERE q.state = 'running' AND q.queue = pol.queue AND q.id IS DISTINCT FROM p_exclude
        GROUP BY 1) x;
    END IF;
    taken := 0;
    walked := 0;
    FOR c IN
      SELECT q.id, q.priority, q.fair_seq, q.run_at, coalesce(q."group", '') AS g FROM tasks q
      WHERE q.state = 'queued' AND q.capped AND q.queue = pol.queue AND q.run_at <= now()
        AND q.id IS DISTINCT FROM p_exclude
        AND q.isolation <> ALL(coalesce(p_skip, '{}'))
        AND (q.depends_on = '{}' OR NOT EXISTS (
              SELECT 1 FROM tasks d WHERE d.id = ANY(q.depends_on) AND d.state <> 'succeeded'))
      ORDER BY q.priority DESC, q.fair_seq, q.run_at, q.id
    LOOP
      walked := walked + 1;
      EXIT WHEN walked > 2000;  -- bounded: groups at their cap are skipped one by one
      gn := coalesce((groups->>c.g)::integer, 0);
      CONTINUE WHEN pol.max_running_per_group IS NOT NULL AND gn >= pol.max_running_per_group;
      PERFORM 1 FROM tasks q WHERE q.id = c.id AND q.state = 'queued' FOR UPDATE SKIP LOCKED;
      CONTINUE WHEN NOT FOUND;
      groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn + 1));
      taken := taken + 1;
      id := c.id; priority := c.priority; fair_seq := c.fair_seq; run_at := c.run_at;
      started := t;
      RETURN NEXT;
      EXIT WHEN taken >= allowed;
    END LOOP;
  END LOOP;
END $$;
)sql";

}  // namespace runner::queue
