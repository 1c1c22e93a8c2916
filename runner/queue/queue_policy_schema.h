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

// Migration v5: capped claims that scale with the claimers. v3's claim held
// the queue's policy row locked from counting what runs until its commit, so
// every claim of a capped queue waited for the one before (4 claimers: 0.48x
// the plain claim, p99 17 ms), and the rate limit counted every start in the
// window on every claim (p99 31 ms). Now nothing a claim counts needs a lock
// that other claimers wait for:
// - max_running: rows 1..max_running of queue_run_slots, one per task that
//   may run. A claim locks free slot rows FOR UPDATE SKIP LOCKED (claimers
//   pass each other) and the task records its slot (tasks.cap_slot). A slot
//   is free when no running task holds it, read with a fresh snapshot after
//   the row is locked: a finish, a reap or a release frees it by ending the
//   task, with no write here (nothing to drift). Two running tasks never
//   share a slot, so at most max_running run. A running task of the queue
//   without a slot, or in one above max_running (it started before the cap
//   was set or lowered), stops capped claims until it ends.
// - max_running_per_group: a try-lock per (queue, group) (transaction
//   advisory lock; a group another claimer is taking from now is skipped),
//   then a fresh count of that group's running tasks.
// - rate_limit: a ring of up to `count` rows of queue_rate_slots, each the
//   time of the last start that used it. A start takes a row whose time is at
//   least `per` old (FOR UPDATE SKIP LOCKED) and writes its start time there.
//   Two starts less than `per` apart never use the same row, so count + 1
//   starts within `per` would need count + 1 rows: the sliding window holds.
// - Both tables grow on demand (64 slot rows, 256 ring rows at a time, under
//   the policy row: only growth waits), so a cap of 1,000,000 costs rows only
//   as far as it is used.
// - A claim holds the queue's policy advisory lock shared (a policy write
//   takes it exclusively): a policy write and a claim never overlap.
// - queue_starts is gone: the ring holds the window's starts.
inline constexpr std::string_view kV5CapSlots = R"sql(
ALTER TABLE tasks ADD COLUMN cap_slot integer;
ALTER TABLE queue_policies ADD COLUMN run_slots integer NOT NULL DEFAULT 0,
                           ADD COLUMN rate_slots integer NOT NULL DEFAULT 0;
CREATE TABLE queue_run_slots (
  queue text NOT NULL,
  slot  integer NOT NULL,
  PRIMARY KEY (queue, slot)
);
CREATE TABLE queue_rate_slots (
  queue text NOT NULL,
  slot  integer NOT NULL,
  at    timestamptz NOT NULL,
  PRIMARY KEY (queue, slot)
) WITH (fillfactor = 50);
CREATE INDEX queue_rate_slots_at_idx ON queue_rate_slots (queue, at);
CREATE INDEX tasks_running_group_idx ON tasks (queue, (coalesce("group", '')))
  WHERE state = 'running';

-- What runs now in a queue with max_running keeps its place: slots 1..k.
UPDATE tasks t SET cap_slot = r.n FROM (
  SELECT q.id, row_number() OVER (PARTITION BY q.queue ORDER BY q.id)::integer AS n
  FROM tasks q JOIN queue_policies p ON p.queue = q.queue
  WHERE q.state = 'running' AND p.max_running IS NOT NULL) r
WHERE t.id = r.id;
-- The window's starts carry over into the ring.
INSERT INTO queue_rate_slots (queue, slot, at)
  SELECT queue, n, at FROM (
    SELECT s.queue, s.at, p.rate_count,
           row_number() OVER (PARTITION BY s.queue ORDER BY s.at DESC)::integer AS n
    FROM queue_starts s JOIN queue_policies p ON p.queue = s.queue
    WHERE p.rate_count IS NOT NULL AND s.at > now() - p.rate_per * interval '1 second') x
  WHERE n <= rate_count;
UPDATE queue_policies p SET rate_slots = (SELECT count(*) FROM queue_rate_slots r
                                          WHERE r.queue = p.queue);
DROP TABLE queue_starts;

-- A start spends its ring row: called by the claim's UPDATE for each task it
-- starts (its own snapshot, unlike the claim statement's, sees ring rows made
-- since that statement began). Returns the start time.
CREATE FUNCTION runner_rate_spend(p_queue text, p_slot integer, p_at timestamptz)
RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  UPDATE queue_rate_slots SET at = p_at WHERE queue = p_queue AND slot = p_slot;
  RETURN p_at;
END $$;

DROP FUNCTION runner_claim_capped(text[], text[], integer, text);
-- The capped part of a claim: for each capped, unpaused queue in p_queues
-- with work, up to p_n tasks that fit, in claim order, each with the run slot
-- and the ring row it takes (locked until the caller commits). The caller
-- starts any subset of them in the same statement, writing cap_slot and the
-- ring row's time for those only. p_exclude: the task the calling statement
-- finishes (its slot is free).
CREATE FUNCTION runner_claim_capped(p_queues text[], p_skip text[], p_n integer, p_exclude text)
RETURNS TABLE (id text, priority integer, fair_seq bigint, run_at timestamptz,
               started timestamptz, cap_slot integer, rate_slot integer)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  qname text;
  pol queue_policies%ROWTYPE;
  c record;
  allowed integer;
  taken integer;
  walked integer;
  used integer[];
  slots integer[];
  more integer[];
  rates integer[];
  have integer;
  groups jsonb;
  gn integer;
  t timestamptz;
BEGIN
  IF p_n <= 0 THEN RETURN; END IF;
  FOR qname IN
    SELECT p.queue FROM queue_policies p
    WHERE NOT p.paused AND runner_policy_caps(p)
      AND (p_queues IS NULL OR p.queue = ANY(p_queues))
      AND EXISTS (SELECT 1 FROM tasks q WHERE q.state = 'queued' AND q.capped
                  AND q.queue = p.queue AND q.run_at <= now())
    ORDER BY p.queue
  LOOP
    PERFORM pg_advisory_xact_lock_shared()sql" RUNNER_POLICY_LOCK("qname") R"sql();
    SELECT * INTO pol FROM queue_policies p WHERE p.queue = qname;  -- as of the lock
    CONTINUE WHEN NOT FOUND OR pol.paused OR NOT runner_policy_caps(pol);
    t := clock_timestamp();
    allowed := p_n;
    slots := NULL;
    rates := NULL;
    IF pol.max_running IS NOT NULL THEN
      -- Each pass reads (fresh) which slots running tasks hold, keeps the
      -- slots locked so far that none holds (a claim that committed after the
      -- previous read may have taken one), and locks more if too few.
      slots := '{}';
      FOR pass IN 1..4 LOOP
        SELECT array_agg(q.cap_slot) INTO used FROM tasks q
          WHERE q.state = 'running' AND q.queue = qname AND q.id IS DISTINCT FROM p_exclude;
        IF EXISTS (SELECT 1 FROM unnest(used) u WHERE u IS NULL OR u > pol.max_running) THEN
          slots := '{}';  -- over the cap (lowered, or set while these ran): none
          EXIT;
        END IF;
        slots := ARRAY(SELECT x FROM unnest(slots) x WHERE x <> ALL(coalesce(used, '{}')));
        EXIT WHEN cardinality(slots) >= allowed OR pass = 4;
        more := ARRAY(SELECT s.slot FROM queue_run_slots s
          WHERE s.queue = qname AND s.slot <= pol.max_running
            AND s.slot <> ALL(coalesce(used, '{}')) AND s.slot <> ALL(slots)
          ORDER BY s.slot LIMIT allowed - cardinality(slots) FOR UPDATE SKIP LOCKED);
        IF cardinality(more) = 0 THEN
          -- None free: add rows if the cap has some not made yet.
          SELECT p.run_slots INTO have FROM queue_policies p WHERE p.queue = qname
            FOR NO KEY UPDATE;
          IF have < pol.max_running THEN
            INSERT INTO queue_run_slots (queue, slot)
              SELECT qname, g FROM generate_series(have + 1, least(pol.max_running, have + 64)) g;
            UPDATE queue_policies p SET run_slots = least(pol.max_running, have + 64)
              WHERE p.queue = qname;
          END IF;
          EXIT WHEN have >= pol.max_running AND have <= pol.run_slots;  -- nothing new to try
          pol.run_slots := greatest(have, pol.run_slots);
        END IF;
        slots := slots || more;
      END LOOP;
      allowed := least(allowed, cardinality(slots));
    END IF;
    IF pol.rate_count IS NOT NULL AND allowed > 0 THEN
      -- A row another claimer spent since this statement's snapshot fails the
      -- time check again once locked: one pass is exact. More rows only by
      -- growth.
      rates := '{}';
      FOR pass IN 1..3 LOOP
        rates := rates || ARRAY(SELECT r.slot FROM queue_rate_slots r
          WHERE r.queue = qname AND r.slot <= pol.rate_count
            AND r.at <= t - pol.rate_per * interval '1 second' AND r.slot <> ALL(rates)
          ORDER BY r.at LIMIT allowed - cardinality(rates) FOR UPDATE SKIP LOCKED);
        EXIT WHEN cardinality(rates) >= allowed OR pass = 3;
        SELECT p.rate_slots INTO have FROM queue_policies p WHERE p.queue = qname
          FOR NO KEY UPDATE;
        IF have < pol.rate_count THEN
          INSERT INTO queue_rate_slots (queue, slot, at)
            SELECT qname, g, '-infinity'
            FROM generate_series(have + 1, least(pol.rate_count, have + 256)) g;
          UPDATE queue_policies p SET rate_slots = least(pol.rate_count, have + 256)
            WHERE p.queue = qname;
        END IF;
        EXIT WHEN have >= pol.rate_count AND have <= pol.rate_slots;
        pol.rate_slots := greatest(have, pol.rate_slots);
      END LOOP;
      allowed := least(allowed, cardinality(rates));
    END IF;
    CONTINUE WHEN allowed <= 0;
    groups := '{}';
    taken := 0;
    walked := 0;
    FOR c IN
      SELECT q.id, q.priority, q.fair_seq, q.run_at, coalesce(q."group", '') AS g FROM tasks q
      WHERE q.state = 'queued' AND q.capped AND q.queue = qname AND q.run_at <= now()
        AND q.id IS DISTINCT FROM p_exclude
        AND q.isolation <> ALL(coalesce(p_skip, '{}'))
        AND (q.depends_on = '{}' OR NOT EXISTS (
              SELECT 1 FROM tasks d WHERE d.id = ANY(q.depends_on) AND d.state <> 'succeeded'))
      ORDER BY q.priority DESC, q.fair_seq, q.run_at, q.id
    LOOP
      walked := walked + 1;
      EXIT WHEN walked > 2000;  -- bounded: groups at their cap are skipped one by one
      IF pol.max_running_per_group IS NOT NULL THEN
        gn := (groups->>c.g)::integer;
        IF gn IS NULL THEN
          -- A group another claimer is taking from now: skipped (as if full).
          IF pg_try_advisory_xact_lock(hashtextextended(
               'runner.queue_group:' || qname || chr(1) || c.g, 0)) THEN
            SELECT count(*) INTO gn FROM tasks q
              WHERE q.state = 'running' AND q.queue = qname
                AND coalesce(q."group", '') = c.g AND q.id IS DISTINCT FROM p_exclude;
          ELSE
            gn := pol.max_running_per_group;
          END IF;
          groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn));
        END IF;
        CONTINUE WHEN gn >= pol.max_running_per_group;
      END IF;
      PERFORM 1 FROM tasks q WHERE q.id = c.id AND q.state = 'queued' FOR UPDATE SKIP LOCKED;
      CONTINUE WHEN NOT FOUND;
      IF pol.max_running_per_group IS NOT NULL THEN
        groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn + 1));
      END IF;
      taken := taken + 1;
      id := c.id; priority := c.priority; fair_seq := c.fair_seq; run_at := c.run_at;
      started := t;
      cap_slot := slots[taken];
      rate_slot := rates[taken];
      RETURN NEXT;
      EXIT WHEN taken >= allowed;
    END LOOP;
  END LOOP;
END $$;
)sql";

}  // namespace runner::queue
