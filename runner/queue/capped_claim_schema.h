#pragma once

// The capped claim's later migrations (v6, v7); v2 and v5 are in
// queue_policy_schema.h. An applied migration's text is never edited: a
// change is a new migration here.

#include <string_view>

#include "runner/queue/queue_policy_schema.h"  // RUNNER_POLICY_LOCK

namespace runner::queue {

// Migration v6: the capped claim in fewer statements, none of which walks what
// grows with the claims. Measured with 100,000 queued in 1,000 groups, 4
// claimers (bench/queue): v5's claim ran about 13 statements inside
// runner_claim_capped, and two of them walked dead index entries: the
// "queue has work" EXISTS walked tasks_capped_idx from its head over every
// task claimed since the last vacuum (as far as the candidate walk right after
// it; 0.14 ms and 84 buffers a claim after 9,000 claims), and the array_agg of
// the running tasks' slots ran twice. Now, per capped queue:
// 1. its name is read and its policy lock taken (shared) in one statement;
// 2. one statement, after that lock: the policy, the slots running tasks hold
//    (over the cap: no start), and up to n run slots and rate ring rows that
//    look free, locked SKIP LOCKED; no "has work" walk (the candidate walk
//    finds none as cheaply);
// 3. one statement checks, with a fresh snapshot, that no task took a locked
//    slot since step 2 read them (a claim that committed in between held the
//    row until then); a retry loop for that race and for growth, as in v5;
// 4. the candidate walk; per group, after its try-lock, one statement counts
//    its running tasks and, when one more fits, locks the task.
// A start is recorded when the task passed every fresh check (v5 recorded
// the time before its slot check, so a start could appear to overlap the
// finish that freed its slot). Same semantics as v5 otherwise: nothing
// counted is read under a lock other claimers
// wait for, caps hold at every instant, a held task keeps its attempts.
// tasks_running_queue_idx becomes (queue, cap_slot): the slot checks are index
// probes, and every use of the old one has its column as a prefix. v1's
// tasks_running_idx (lease_owner) goes: no statement looks a task up by its
// lease owner, and with the few rows the statistics of a young queue show,
// the generic plans of the slot and group counts chose it over the indexes
// made for them, walking every running task (and every dead entry a claim
// left since the last vacuum) instead of one slot's or one group's.
inline constexpr std::string_view kV6CappedClaim = R"sql(
DROP INDEX tasks_running_queue_idx;
DROP INDEX tasks_running_idx;
CREATE INDEX tasks_running_slot_idx ON tasks (queue, cap_slot) WHERE state = 'running';

CREATE OR REPLACE FUNCTION runner_claim_capped(p_queues text[], p_skip text[], p_n integer, p_exclude text)
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
  tried integer[];
  more integer[];
  rates integer[];
  have integer;
  groups jsonb;
  gn integer;
  got boolean;
  t timestamptz;
BEGIN
  IF p_n <= 0 THEN RETURN; END IF;
  -- The queue's policy lock, shared, as its name is read (in queue order).
  FOR qname IN
    SELECT p.queue FROM queue_policies p
    WHERE NOT p.paused AND runner_policy_caps(p)
      AND (p_queues IS NULL OR p.queue = ANY(p_queues))
      AND pg_advisory_xact_lock_shared()sql" RUNNER_POLICY_LOCK("p.queue") R"sql() IS NOT NULL
    ORDER BY p.queue
  LOOP
    t := clock_timestamp();  -- the rate window's "now" (a start is recorded later)
    -- One statement, after the lock: the policy, which run slots running
    -- tasks hold, and up to p_n run slots and rate ring rows that look free,
    -- locked (SKIP LOCKED: claimers pass each other).
    SELECT p.queue, p.max_running, p.max_running_per_group, p.rate_count, p.rate_per,
           p.paused, p.run_slots, p.rate_slots, u.used,
           ARRAY(SELECT s.slot FROM queue_run_slots s
                 WHERE s.queue = p.queue AND s.slot <= p.max_running
                   AND s.slot <> ALL(coalesce(u.used, '{}'))
                 ORDER BY s.slot LIMIT p_n FOR UPDATE SKIP LOCKED),
           ARRAY(SELECT r.slot FROM queue_rate_slots r
                 WHERE r.queue = p.queue AND r.slot <= p.rate_count
                   AND r.at <= t - p.rate_per * interval '1 second'
                 ORDER BY r.at LIMIT p_n FOR UPDATE SKIP LOCKED)
      INTO pol.queue, pol.max_running, pol.max_running_per_group, pol.rate_count, pol.rate_per,
           pol.paused, pol.run_slots, pol.rate_slots, used, more, rates
      FROM queue_policies p
      LEFT JOIN LATERAL (SELECT array_agg(x.s) AS used FROM (
                           SELECT r.cap_slot AS s FROM tasks r
                           WHERE p.max_running IS NOT NULL AND r.state = 'running'
                             AND r.queue = p.queue AND r.id IS DISTINCT FROM p_exclude
                           ORDER BY r.queue, r.cap_slot) x) u ON true
      WHERE p.queue = qname;
    CONTINUE WHEN NOT FOUND OR pol.paused OR NOT runner_policy_caps(pol);
    allowed := p_n;
    slots := NULL;
    IF pol.max_running IS NOT NULL THEN
      CONTINUE WHEN EXISTS (SELECT 1 FROM unnest(used) x WHERE x IS NULL OR x > pol.max_running);
      tried := coalesce(used, '{}') || more;
      slots := '{}';
      FOR pass IN 1..4 LOOP
        IF cardinality(more) > 0 THEN
          -- (An ordered range: the one plan that walks tasks_running_slot_idx
          -- over those slots alone, whatever the statistics say.)
          slots := slots || ARRAY(SELECT x FROM unnest(more) x WHERE x <> ALL(coalesce((
            SELECT array_agg(y.s) FROM (
              SELECT r.cap_slot AS s FROM tasks r
              WHERE r.state = 'running' AND r.queue = qname AND r.id IS DISTINCT FROM p_exclude
                AND r.cap_slot BETWEEN (SELECT min(m) FROM unnest(more) m)
                                   AND (SELECT max(m) FROM unnest(more) m)
              ORDER BY r.queue, r.cap_slot) y), '{}')));
        ELSIF pol.run_slots < pol.max_running THEN
          SELECT p.run_slots INTO have FROM queue_policies p WHERE p.queue = qname
            FOR NO KEY UPDATE;
          IF have < pol.max_running THEN
            INSERT INTO queue_run_slots (queue, slot)
              SELECT qname, g FROM generate_series(have + 1, least(pol.max_running, have + 64)) g;
            UPDATE queue_policies p SET run_slots = least(pol.max_running, have + 64)
              WHERE p.queue = qname;
          END IF;
          pol.run_slots := CASE WHEN have < pol.max_running
                           THEN least(pol.max_running, have + 64) ELSE have END;
        ELSE
          EXIT;
        END IF;
        EXIT WHEN cardinality(slots) >= allowed OR pass = 4;
        more := ARRAY(SELECT s.slot FROM queue_run_slots s
          WHERE s.queue = qname AND s.slot <= pol.max_running AND s.slot <> ALL(tried)
          ORDER BY s.slot LIMIT allowed - cardinality(slots) FOR UPDATE SKIP LOCKED);
        tried := tried || more;
      END LOOP;
      allowed := least(allowed, cardinality(slots));
    END IF;
    IF pol.rate_count IS NULL THEN
      rates := NULL;
    ELSIF cardinality(rates) < allowed THEN
      FOR pass IN 1..3 LOOP
        EXIT WHEN pol.rate_slots >= pol.rate_count;
        SELECT p.rate_slots INTO have FROM queue_policies p WHERE p.queue = qname
          FOR NO KEY UPDATE;
        IF have < pol.rate_count THEN
          INSERT INTO queue_rate_slots (queue, slot, at)
            SELECT qname, g, '-infinity'
            FROM generate_series(have + 1, least(pol.rate_count, have + 256)) g;
          UPDATE queue_policies p SET rate_slots = least(pol.rate_count, have + 256)
            WHERE p.queue = qname;
        END IF;
        pol.rate_slots := CASE WHEN have < pol.rate_count
                            THEN least(pol.rate_count, have + 256) ELSE have END;
        rates := rates || ARRAY(SELECT r.slot FROM queue_rate_slots r
          WHERE r.queue = qname AND r.slot <= pol.rate_count
            AND r.at <= t - pol.rate_per * interval '1 second' AND r.slot <> ALL(rates)
          ORDER BY r.at LIMIT allowed - cardinality(rates) FOR UPDATE SKIP LOCKED);
        EXIT WHEN cardinality(rates) >= allowed;
      END LOOP;
    END IF;
    IF rates IS NOT NULL THEN
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
      got := NULL;
      IF pol.max_running_per_group IS NOT NULL THEN
        gn := (groups->>c.g)::integer;
        IF gn IS NULL THEN
          -- A group another claimer is taking from now: skipped (as if full).
          IF pg_try_advisory_xact_lock(hashtextextended(
               'runner.queue_group:' || qname || chr(1) || c.g, 0)) THEN
            -- After the group's lock: its running tasks, and the task locked if one more fits.
            SELECT x.n, CASE WHEN x.n < pol.max_running_per_group THEN EXISTS (
                     SELECT 1 FROM (SELECT 1 FROM tasks l WHERE l.id = c.id AND l.state = 'queued'
                                    FOR UPDATE SKIP LOCKED) k) END
              INTO gn, got
              FROM (SELECT count(*)::integer AS n FROM (
                      SELECT 1 FROM tasks q
                      WHERE q.state = 'running' AND q.queue = qname
                        AND coalesce(q."group", '') = c.g AND q.id IS DISTINCT FROM p_exclude
                      ORDER BY q.queue, coalesce(q."group", '')) r) x;
          ELSE
            gn := pol.max_running_per_group;
          END IF;
          groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn));
        END IF;
        CONTINUE WHEN gn >= pol.max_running_per_group;
      END IF;
      IF got IS NULL THEN
        PERFORM 1 FROM tasks q WHERE q.id = c.id AND q.state = 'queued' FOR UPDATE SKIP LOCKED;
        got := FOUND;
      END IF;
      CONTINUE WHEN NOT got;
      IF pol.max_running_per_group IS NOT NULL THEN
        groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn + 1));
      END IF;
      taken := taken + 1;
      id := c.id; priority := c.priority; fair_seq := c.fair_seq; run_at := c.run_at;
      -- After every fresh check it passed: a start recorded after the finish
      -- that freed its slot (finished_at is that statement's start).
      started := clock_timestamp();
      cap_slot := slots[taken];
      rate_slot := rates[taken];
      RETURN NEXT;
      EXIT WHEN taken >= allowed;
    END LOOP;
  END LOOP;
END $$;
)sql";

// Migration v7: a capped finish wakes the claimers only when one may be
// waiting. Since v3 every finish of a capped task sent pg_notify, and
// PostgreSQL serializes the commits of notifying transactions (a lock on the
// whole notification queue): with 4 claimers, 10-20% of the capped throughput
// (pgbench A/B on the claim and finish statements). Now a claim that a cap
// may hold back (its slots or a group full, or a group skipped) first sets
// queue_policies.waiting_until (an UPDATE: a row lock), then reads what runs
// again; a finish reads waiting_until FOR SHARE and notifies only while it is
// in the future. Either the finish took its lock first (the claim's UPDATE
// waits for the finish to commit, so the claim's fresh read sees the freed
// slot) or the claim did (the finish waits for the claim to commit and sees
// the flag). The flag lasts 62 minutes, longer than the longest poll a node can
// be configured with (3,600 s), so a claimer asleep since it set it is woken;
// it is never cleared (no lock upgrade, no deadlock between finishers).
inline constexpr std::string_view kV7WaitingClaims = R"sql(
ALTER TABLE queue_policies ADD COLUMN waiting_until timestamptz NOT NULL DEFAULT '-infinity';

CREATE OR REPLACE FUNCTION runner_claim_capped(p_queues text[], p_skip text[], p_n integer, p_exclude text)
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
  tried integer[];
  more integer[];
  rates integer[];
  have integer;
  groups jsonb;
  gn integer;
  got boolean;
  flagged boolean;
  skipped boolean;
  t timestamptz;
BEGIN
  IF p_n <= 0 THEN RETURN; END IF;
  -- The queue's policy lock, shared, as its name is read (in queue order).
  FOR qname IN
    SELECT p.queue FROM queue_policies p
    WHERE NOT p.paused AND runner_policy_caps(p)
      AND (p_queues IS NULL OR p.queue = ANY(p_queues))
      AND pg_advisory_xact_lock_shared()sql" RUNNER_POLICY_LOCK("p.queue") R"sql() IS NOT NULL
    ORDER BY p.queue
  LOOP
    t := clock_timestamp();  -- the rate window's "now" (a start is recorded later)
    flagged := false;
    skipped := false;
    -- One statement, after the lock: the policy, which run slots running
    -- tasks hold, and up to p_n run slots and rate ring rows that look free,
    -- locked (SKIP LOCKED: claimers pass each other).
    SELECT p.queue, p.max_running, p.max_running_per_group, p.rate_count, p.rate_per,
           p.paused, p.run_slots, p.rate_slots, u.used,
           ARRAY(SELECT s.slot FROM queue_run_slots s
                 WHERE s.queue = p.queue AND s.slot <= p.max_running
                   AND s.slot <> ALL(coalesce(u.used, '{}'))
                 ORDER BY s.slot LIMIT p_n FOR UPDATE SKIP LOCKED),
           ARRAY(SELECT r.slot FROM queue_rate_slots r
                 WHERE r.queue = p.queue AND r.slot <= p.rate_count
                   AND r.at <= t - p.rate_per * interval '1 second'
                 ORDER BY r.at LIMIT p_n FOR UPDATE SKIP LOCKED)
      INTO pol.queue, pol.max_running, pol.max_running_per_group, pol.rate_count, pol.rate_per,
           pol.paused, pol.run_slots, pol.rate_slots, used, more, rates
      FROM queue_policies p
      LEFT JOIN LATERAL (SELECT array_agg(x.s) AS used FROM (
                           SELECT r.cap_slot AS s FROM tasks r
                           WHERE p.max_running IS NOT NULL AND r.state = 'running'
                             AND r.queue = p.queue AND r.id IS DISTINCT FROM p_exclude
                           ORDER BY r.queue, r.cap_slot) x) u ON true
      WHERE p.queue = qname;
    CONTINUE WHEN NOT FOUND OR pol.paused OR NOT runner_policy_caps(pol);
    allowed := p_n;
    slots := NULL;
    IF pol.max_running IS NOT NULL THEN
      IF coalesce(cardinality(used), 0) + p_n > pol.max_running
         OR EXISTS (SELECT 1 FROM unnest(used) x WHERE x IS NULL OR x > pol.max_running) THEN
        -- The cap may hold this claim back: flag the queue before the fresh
        -- reads below (see the header), then read what runs again.
        UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
                 clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
        flagged := true;
        SELECT array_agg(x.s) INTO used FROM (
          SELECT r.cap_slot AS s FROM tasks r
          WHERE r.state = 'running' AND r.queue = qname AND r.id IS DISTINCT FROM p_exclude
          ORDER BY r.queue, r.cap_slot) x;
      END IF;
      CONTINUE WHEN EXISTS (SELECT 1 FROM unnest(used) x WHERE x IS NULL OR x > pol.max_running);
      tried := coalesce(used, '{}') || more;
      slots := '{}';
      FOR pass IN 1..5 LOOP
        IF cardinality(more) > 0 THEN
          -- (An ordered range: the one plan that walks tasks_running_slot_idx
          -- over those slots alone, whatever the statistics say.)
          slots := slots || ARRAY(SELECT x FROM unnest(more) x WHERE x <> ALL(coalesce((
            SELECT array_agg(y.s) FROM (
              SELECT r.cap_slot AS s FROM tasks r
              WHERE r.state = 'running' AND r.queue = qname AND r.id IS DISTINCT FROM p_exclude
                AND r.cap_slot BETWEEN (SELECT min(m) FROM unnest(more) m)
                                   AND (SELECT max(m) FROM unnest(more) m)
              ORDER BY r.queue, r.cap_slot) y), '{}')));
        ELSIF pol.run_slots < pol.max_running THEN
          SELECT p.run_slots INTO have FROM queue_policies p WHERE p.queue = qname
            FOR NO KEY UPDATE;
          IF have < pol.max_running THEN
            INSERT INTO queue_run_slots (queue, slot)
              SELECT qname, g FROM generate_series(have + 1, least(pol.max_running, have + 64)) g;
            UPDATE queue_policies p SET run_slots = least(pol.max_running, have + 64)
              WHERE p.queue = qname;
          END IF;
          pol.run_slots := CASE WHEN have < pol.max_running
                           THEN least(pol.max_running, have + 64) ELSE have END;
        ELSIF NOT flagged THEN
          -- Short of slots: flag, then look again at what runs (fresh).
          UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
                   clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
          flagged := true;
          SELECT array_agg(x.s) INTO used FROM (
            SELECT r.cap_slot AS s FROM tasks r
            WHERE r.state = 'running' AND r.queue = qname AND r.id IS DISTINCT FROM p_exclude
            ORDER BY r.queue, r.cap_slot) x;
          tried := coalesce(used, '{}') || slots;
        ELSE
          EXIT;
        END IF;
        EXIT WHEN cardinality(slots) >= allowed OR pass = 5;
        more := ARRAY(SELECT s.slot FROM queue_run_slots s
          WHERE s.queue = qname AND s.slot <= pol.max_running AND s.slot <> ALL(tried)
          ORDER BY s.slot LIMIT allowed - cardinality(slots) FOR UPDATE SKIP LOCKED);
        tried := tried || more;
      END LOOP;
      allowed := least(allowed, cardinality(slots));
    END IF;
    IF pol.rate_count IS NULL THEN
      rates := NULL;
    ELSIF cardinality(rates) < allowed THEN
      FOR pass IN 1..3 LOOP
        EXIT WHEN pol.rate_slots >= pol.rate_count;
        SELECT p.rate_slots INTO have FROM queue_policies p WHERE p.queue = qname
          FOR NO KEY UPDATE;
        IF have < pol.rate_count THEN
          INSERT INTO queue_rate_slots (queue, slot, at)
            SELECT qname, g, '-infinity'
            FROM generate_series(have + 1, least(pol.rate_count, have + 256)) g;
          UPDATE queue_policies p SET rate_slots = least(pol.rate_count, have + 256)
            WHERE p.queue = qname;
        END IF;
        pol.rate_slots := CASE WHEN have < pol.rate_count
                            THEN least(pol.rate_count, have + 256) ELSE have END;
        rates := rates || ARRAY(SELECT r.slot FROM queue_rate_slots r
          WHERE r.queue = qname AND r.slot <= pol.rate_count
            AND r.at <= t - pol.rate_per * interval '1 second' AND r.slot <> ALL(rates)
          ORDER BY r.at LIMIT allowed - cardinality(rates) FOR UPDATE SKIP LOCKED);
        EXIT WHEN cardinality(rates) >= allowed;
      END LOOP;
    END IF;
    IF rates IS NOT NULL THEN
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
      got := NULL;
      IF pol.max_running_per_group IS NOT NULL THEN
        gn := (groups->>c.g)::integer;
        IF gn IS NULL THEN
          -- A group another claimer is taking from now: skipped (as if full).
          IF pg_try_advisory_xact_lock(hashtextextended(
               'runner.queue_group:' || qname || chr(1) || c.g, 0)) THEN
            -- After the group's lock: its running tasks, and the task locked if one more fits.
            SELECT x.n, CASE WHEN x.n < pol.max_running_per_group THEN EXISTS (
                     SELECT 1 FROM (SELECT 1 FROM tasks l WHERE l.id = c.id AND l.state = 'queued'
                                    FOR UPDATE SKIP LOCKED) k) END
              INTO gn, got
              FROM (SELECT count(*)::integer AS n FROM (
                      SELECT 1 FROM tasks q
                      WHERE q.state = 'running' AND q.queue = qname
                        AND coalesce(q."group", '') = c.g AND q.id IS DISTINCT FROM p_exclude
                      ORDER BY q.queue, coalesce(q."group", '')) r) x;
            IF gn >= pol.max_running_per_group AND NOT flagged THEN
              -- The group is full: flag, then count it again (fresh).
              UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
                       clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
              flagged := true;
              SELECT x.n, CASE WHEN x.n < pol.max_running_per_group THEN EXISTS (
                       SELECT 1 FROM (SELECT 1 FROM tasks l WHERE l.id = c.id AND l.state = 'queued'
                                      FOR UPDATE SKIP LOCKED) k) END
                INTO gn, got
                FROM (SELECT count(*)::integer AS n FROM (
                        SELECT 1 FROM tasks q
                        WHERE q.state = 'running' AND q.queue = qname
                          AND coalesce(q."group", '') = c.g AND q.id IS DISTINCT FROM p_exclude
                        ORDER BY q.queue, coalesce(q."group", '')) r) x;
            END IF;
          ELSE
            gn := pol.max_running_per_group;
            skipped := true;
          END IF;
          groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn));
        END IF;
        CONTINUE WHEN gn >= pol.max_running_per_group;
      END IF;
      IF got IS NULL THEN
        PERFORM 1 FROM tasks q WHERE q.id = c.id AND q.state = 'queued' FOR UPDATE SKIP LOCKED;
        got := FOUND;
      END IF;
      CONTINUE WHEN NOT got;
      IF pol.max_running_per_group IS NOT NULL THEN
        groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn + 1));
      END IF;
      taken := taken + 1;
      id := c.id; priority := c.priority; fair_seq := c.fair_seq; run_at := c.run_at;
      -- After every fresh check it passed: a start recorded after the finish
      -- that freed its slot (finished_at is that statement's start).
      started := clock_timestamp();
      cap_slot := slots[taken];
      rate_slot := rates[taken];
      RETURN NEXT;
      EXIT WHEN taken >= allowed;
    END LOOP;
    IF skipped AND taken < allowed AND NOT flagged THEN
      -- A group another claimer was taking from was skipped: the next finish wakes us.
      UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
               clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
    END IF;
  END LOOP;
END $$;
)sql";

// Migration v8: the capped claim without the statements that cost more than
// what they read. Measured (pgbench on the claim and finish statements, 100,000
// queued in 1,000 groups, max_running 64, max_running_per_group 2; perf of
// the backend): v7's runner_claim_capped took about 0.2 ms a call, most of it
// the executor start of its statements (plans are cached, but each
// statement's executor state is built again on every execution), not their
// reads (a few buffers each). v7 ran 7 statements a claim where one claim
// fits: the policy lock, the policy with the slot locks, two EXISTS over the
// running slots (plpgsql runs an EXISTS as a query), the slot re-check, the
// candidate walk and the group count. Now the slot rows are locked in the
// statement that takes the policy lock, and the next statement (a fresh
// snapshot, after both locks) reads the policy and what runs and keeps the
// locked slots no running task holds: the re-check needs no statement of its
// own, and the over-the-cap checks are aggregates of that read. 4 statements
// a claim when the slots suffice; the loop that locks more slots (each
// checked with a read after its lock), grows the rows or flags the queue runs
// only when they do not. The locking protocol is v6's and v7's: a slot is
// used only if a read after its row lock shows no running task holds it, the
// wake-up flag is set before the reads a held-back claim relies on.
inline constexpr std::string_view kV8LeanCappedClaim = R"sql(
CREATE OR REPLACE FUNCTION runner_claim_capped(p_queues text[], p_skip text[], p_n integer, p_exclude text)
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
  nused integer;
  bad boolean;
  locked integer[];
  fmax integer;
  fgrp integer;
  fid text;
  fg text;
  fprio integer;
  fseq bigint;
  frun timestamptz;
  slots integer[];
  tried integer[];
  more integer[];
  rates integer[];
  have integer;
  groups jsonb;
  gn integer;
  got boolean;
  flagged boolean;
  skipped boolean;
  t timestamptz;
BEGIN
  IF p_n <= 0 THEN RETURN; END IF;
  -- Per queue, in queue order: its policy lock (shared), then up to p_n run
  -- slot rows that look free, locked (SKIP LOCKED: claimers pass each other).
  FOR qname, fmax, fgrp, fid, fg, fprio, fseq, frun, locked IN
    SELECT p.queue, p.max_running, p.max_running_per_group, f.id, f.g, f.priority, f.fair_seq,
           f.run_at, CASE WHEN p.max_running IS NOT NULL THEN ARRAY(
             SELECT s.slot FROM queue_run_slots s
             WHERE s.queue = p.queue AND s.slot <= p.max_running
               AND s.slot <> ALL(coalesce((SELECT array_agg(x.s) FROM (
                     SELECT r.cap_slot AS s FROM tasks r
                     WHERE r.state = 'running' AND r.queue = p.queue
                       AND r.id IS DISTINCT FROM p_exclude
                     ORDER BY r.queue, r.cap_slot) x), '{}'))
             ORDER BY s.slot LIMIT p_n FOR UPDATE SKIP LOCKED) END
    FROM queue_policies p
    -- The fast path (one task, a cap per group, no rate limit): the first
    -- candidate, in claim order, whose group's lock it takes (a group another
    -- claimer is taking from now is skipped, as in the walk below).
    LEFT JOIN LATERAL (
      SELECT k.id, k.g, k.priority, k.fair_seq, k.run_at FROM (
        SELECT q.id, coalesce(q."group", '') AS g, q.priority, q.fair_seq, q.run_at FROM tasks q
        WHERE p_n = 1 AND p.rate_count IS NULL AND p.max_running_per_group IS NOT NULL
          AND q.state = 'queued' AND q.capped AND q.queue = p.queue AND q.run_at <= now()
          AND q.id IS DISTINCT FROM p_exclude
          AND q.isolation <> ALL(coalesce(p_skip, '{}'))
          AND (q.depends_on = '{}' OR NOT EXISTS (
                SELECT 1 FROM tasks d WHERE d.id = ANY(q.depends_on) AND d.state <> 'succeeded'))
        ORDER BY q.priority DESC, q.fair_seq, q.run_at, q.id LIMIT 2000) k
      WHERE pg_try_advisory_xact_lock(hashtextextended(
              'runner.queue_group:' || p.queue || chr(1) || k.g, 0))
      LIMIT 1) f ON true
    WHERE NOT p.paused AND runner_policy_caps(p)
      AND (p_queues IS NULL OR p.queue = ANY(p_queues))
      AND pg_advisory_xact_lock_shared()sql" RUNNER_POLICY_LOCK("p.queue") R"sql() IS NOT NULL
    ORDER BY p.queue
  LOOP
    IF fid IS NOT NULL THEN
      -- One statement, after those locks (a fresh snapshot): the task is
      -- locked and returned if the policy is the one the candidate was found
      -- with, the locked slot is free, the claim fits under max_running (v7
      -- flags the queue otherwise), no running task is over the cap and the
      -- group has room. Otherwise the
      -- general path below decides (the locks taken stay: its walk finds the
      -- same group first).
      SELECT CASE WHEN NOT p.paused AND p.rate_count IS NULL
                    AND p.max_running IS NOT DISTINCT FROM fmax
                    AND p.max_running_per_group IS NOT DISTINCT FROM fgrp
                    AND (p.max_running IS NULL OR (u.n + 1 <= p.max_running AND NOT u.bad
                         AND locked[1] IS NOT NULL AND locked[1] <> ALL(coalesce(u.used, '{}'))))
                    AND g.n < p.max_running_per_group
             THEN EXISTS (SELECT 1 FROM (SELECT 1 FROM tasks l WHERE l.id = fid AND l.state = 'queued'
                                         FOR UPDATE SKIP LOCKED) k) ELSE false END
        INTO got
        FROM queue_policies p
        LEFT JOIN LATERAL (SELECT array_agg(x.s) AS used, count(*)::integer AS n,
                                  coalesce(bool_or(x.s IS NULL OR x.s > p.max_running), false) AS bad
                           FROM (SELECT r.cap_slot AS s FROM tasks r
                                 WHERE p.max_running IS NOT NULL AND r.state = 'running'
                                   AND r.queue = p.queue AND r.id IS DISTINCT FROM p_exclude
                                 ORDER BY r.queue, r.cap_slot) x) u ON true
        CROSS JOIN LATERAL (SELECT count(*)::integer AS n FROM (
                              SELECT 1 FROM tasks q
                              WHERE q.state = 'running' AND q.queue = p.queue
                                AND coalesce(q."group", '') = fg AND q.id IS DISTINCT FROM p_exclude
                              ORDER BY q.queue, coalesce(q."group", '')) r) g
        WHERE p.queue = qname;
      IF got THEN
        id := fid; priority := fprio; fair_seq := fseq; run_at := frun;
        started := clock_timestamp();
        cap_slot := CASE WHEN fmax IS NOT NULL THEN locked[1] END;
        rate_slot := NULL;
        RETURN NEXT;
        CONTINUE;
      END IF;
    END IF;
    t := clock_timestamp();  -- the rate window's "now" (a start is recorded later)
    flagged := false;
    skipped := false;
    -- One statement, after those locks (a fresh snapshot): the policy, the
    -- slots running tasks hold, the locked slots none holds, and up to p_n
    -- rate ring rows that look free, locked.
    SELECT p.queue, p.max_running, p.max_running_per_group, p.rate_count, p.rate_per,
           p.paused, p.run_slots, p.rate_slots, u.used, u.n, u.bad,
           ARRAY(SELECT x FROM unnest(locked) x
                 WHERE x <= p.max_running AND x <> ALL(coalesce(u.used, '{}'))),
           ARRAY(SELECT r.slot FROM queue_rate_slots r
                 WHERE r.queue = p.queue AND r.slot <= p.rate_count
                   AND r.at <= t - p.rate_per * interval '1 second'
                 ORDER BY r.at LIMIT p_n FOR UPDATE SKIP LOCKED)
      INTO pol.queue, pol.max_running, pol.max_running_per_group, pol.rate_count, pol.rate_per,
           pol.paused, pol.run_slots, pol.rate_slots, used, nused, bad, slots, rates
      FROM queue_policies p
      LEFT JOIN LATERAL (SELECT array_agg(x.s) AS used, count(*)::integer AS n,
                                coalesce(bool_or(x.s IS NULL OR x.s > p.max_running), false) AS bad
                         FROM (SELECT r.cap_slot AS s FROM tasks r
                               WHERE p.max_running IS NOT NULL AND r.state = 'running'
                                 AND r.queue = p.queue AND r.id IS DISTINCT FROM p_exclude
                               ORDER BY r.queue, r.cap_slot) x) u ON true
      WHERE p.queue = qname;
    CONTINUE WHEN NOT FOUND OR pol.paused OR NOT runner_policy_caps(pol);
    allowed := p_n;
    IF pol.max_running IS NULL THEN
      slots := NULL;
    ELSE
      IF nused + p_n > pol.max_running OR bad THEN
        -- The cap may hold this claim back: flag the queue before the fresh
        -- reads below (see v7), then read what runs again.
        UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
                 clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
        flagged := true;
        SELECT array_agg(x.s), count(*)::integer,
               coalesce(bool_or(x.s IS NULL OR x.s > pol.max_running), false)
          INTO used, nused, bad FROM (
          SELECT r.cap_slot AS s FROM tasks r
          WHERE r.state = 'running' AND r.queue = qname AND r.id IS DISTINCT FROM p_exclude
          ORDER BY r.queue, r.cap_slot) x;
        slots := ARRAY(SELECT x FROM unnest(slots) x WHERE x <> ALL(coalesce(used, '{}')));
      END IF;
      CONTINUE WHEN bad;  -- over the cap (lowered, or set while these ran): none
      IF cardinality(slots) < allowed THEN
        -- Short of slots: lock more, each checked with a fresh read after its
        -- lock; else grow the rows, else flag and look again (as in v7).
        tried := coalesce(used, '{}') || coalesce(locked, '{}');
        FOR pass IN 1..5 LOOP
          more := ARRAY(SELECT s.slot FROM queue_run_slots s
            WHERE s.queue = qname AND s.slot <= pol.max_running AND s.slot <> ALL(tried)
            ORDER BY s.slot LIMIT allowed - cardinality(slots) FOR UPDATE SKIP LOCKED);
          tried := tried || more;
          IF cardinality(more) > 0 THEN
            -- (An ordered range: the one plan that walks tasks_running_slot_idx
            -- over those slots alone, whatever the statistics say.)
            slots := slots || ARRAY(SELECT x FROM unnest(more) x WHERE x <> ALL(coalesce((
              SELECT array_agg(y.s) FROM (
                SELECT r.cap_slot AS s FROM tasks r
                WHERE r.state = 'running' AND r.queue = qname AND r.id IS DISTINCT FROM p_exclude
                  AND r.cap_slot BETWEEN (SELECT min(m) FROM unnest(more) m)
                                     AND (SELECT max(m) FROM unnest(more) m)
                ORDER BY r.queue, r.cap_slot) y), '{}')));
          ELSIF pol.run_slots < pol.max_running THEN
            SELECT p.run_slots INTO have FROM queue_policies p WHERE p.queue = qname
              FOR NO KEY UPDATE;
            IF have < pol.max_running THEN
              INSERT INTO queue_run_slots (queue, slot)
                SELECT qname, g FROM generate_series(have + 1, least(pol.max_running, have + 64)) g;
              UPDATE queue_policies p SET run_slots = least(pol.max_running, have + 64)
                WHERE p.queue = qname;
            END IF;
            pol.run_slots := CASE WHEN have < pol.max_running
                             THEN least(pol.max_running, have + 64) ELSE have END;
          ELSIF NOT flagged THEN
            -- Short of slots: flag, then look again at what runs (fresh).
            UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
                     clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
            flagged := true;
            SELECT array_agg(x.s) INTO used FROM (
              SELECT r.cap_slot AS s FROM tasks r
              WHERE r.state = 'running' AND r.queue = qname AND r.id IS DISTINCT FROM p_exclude
              ORDER BY r.queue, r.cap_slot) x;
            tried := coalesce(used, '{}') || slots;
          ELSE
            EXIT;
          END IF;
          EXIT WHEN cardinality(slots) >= allowed;
        END LOOP;
      END IF;
      allowed := least(allowed, cardinality(slots));
    END IF;
    IF pol.rate_count IS NULL THEN
      rates := NULL;
    ELSIF cardinality(rates) < allowed THEN
      FOR pass IN 1..3 LOOP
        EXIT WHEN pol.rate_slots >= pol.rate_count;
        SELECT p.rate_slots INTO have FROM queue_policies p WHERE p.queue = qname
          FOR NO KEY UPDATE;
        IF have < pol.rate_count THEN
          INSERT INTO queue_rate_slots (queue, slot, at)
            SELECT qname, g, '-infinity'
            FROM generate_series(have + 1, least(pol.rate_count, have + 256)) g;
          UPDATE queue_policies p SET rate_slots = least(pol.rate_count, have + 256)
            WHERE p.queue = qname;
        END IF;
        pol.rate_slots := CASE WHEN have < pol.rate_count
                            THEN least(pol.rate_count, have + 256) ELSE have END;
        rates := rates || ARRAY(SELECT r.slot FROM queue_rate_slots r
          WHERE r.queue = qname AND r.slot <= pol.rate_count
            AND r.at <= t - pol.rate_per * interval '1 second' AND r.slot <> ALL(rates)
          ORDER BY r.at LIMIT allowed - cardinality(rates) FOR UPDATE SKIP LOCKED);
        EXIT WHEN cardinality(rates) >= allowed;
      END LOOP;
    END IF;
    IF rates IS NOT NULL THEN
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
      got := NULL;
      IF pol.max_running_per_group IS NOT NULL THEN
        gn := (groups->>c.g)::integer;
        IF gn IS NULL THEN
          -- A group another claimer is taking from now: skipped (as if full).
          IF pg_try_advisory_xact_lock(hashtextextended(
               'runner.queue_group:' || qname || chr(1) || c.g, 0)) THEN
            -- After the group's lock: its running tasks, and the task locked if one more fits.
            SELECT x.n, CASE WHEN x.n < pol.max_running_per_group THEN EXISTS (
                     SELECT 1 FROM (SELECT 1 FROM tasks l WHERE l.id = c.id AND l.state = 'queued'
                                    FOR UPDATE SKIP LOCKED) k) END
              INTO gn, got
              FROM (SELECT count(*)::integer AS n FROM (
                      SELECT 1 FROM tasks q
                      WHERE q.state = 'running' AND q.queue = qname
                        AND coalesce(q."group", '') = c.g AND q.id IS DISTINCT FROM p_exclude
                      ORDER BY q.queue, coalesce(q."group", '')) r) x;
            IF gn >= pol.max_running_per_group AND NOT flagged THEN
              -- The group is full: flag, then count it again (fresh).
              UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
                       clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
              flagged := true;
              SELECT x.n, CASE WHEN x.n < pol.max_running_per_group THEN EXISTS (
                       SELECT 1 FROM (SELECT 1 FROM tasks l WHERE l.id = c.id AND l.state = 'queued'
                                      FOR UPDATE SKIP LOCKED) k) END
                INTO gn, got
                FROM (SELECT count(*)::integer AS n FROM (
                        SELECT 1 FROM tasks q
                        WHERE q.state = 'running' AND q.queue = qname
                          AND coalesce(q."group", '') = c.g AND q.id IS DISTINCT FROM p_exclude
                        ORDER BY q.queue, coalesce(q."group", '')) r) x;
            END IF;
          ELSE
            gn := pol.max_running_per_group;
            skipped := true;
          END IF;
          groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn));
        END IF;
        CONTINUE WHEN gn >= pol.max_running_per_group;
      END IF;
      IF got IS NULL THEN
        PERFORM 1 FROM tasks q WHERE q.id = c.id AND q.state = 'queued' FOR UPDATE SKIP LOCKED;
        got := FOUND;
      END IF;
      CONTINUE WHEN NOT got;
      IF pol.max_running_per_group IS NOT NULL THEN
        groups := jsonb_set(groups, ARRAY[c.g], to_jsonb(gn + 1));
      END IF;
      taken := taken + 1;
      id := c.id; priority := c.priority; fair_seq := c.fair_seq; run_at := c.run_at;
      -- After every fresh check it passed: a start recorded after the finish
      -- that freed its slot (finished_at is that statement's start).
      started := clock_timestamp();
      cap_slot := slots[taken];
      rate_slot := rates[taken];
      RETURN NEXT;
      EXIT WHEN taken >= allowed;
    END LOOP;
    IF skipped AND taken < allowed AND NOT flagged THEN
      -- A group another claimer was taking from was skipped: the next finish wakes us.
      UPDATE queue_policies p SET waiting_until = greatest(p.waiting_until,
               clock_timestamp() + interval '62 minutes') WHERE p.queue = qname;
    END IF;
  END LOOP;
END $$;
)sql";

}  // namespace runner::queue
