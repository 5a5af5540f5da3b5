-- Dead letters queryable in PostgreSQL, replays of any size, and every HTTP request recorded.
--
-- deliveries.dead_letter_reason / dead_letter_source: written by the delivery-consumer with
-- the DLQ record (reason, and where the record was read: topic/partition/offset), so operators
-- can filter the DLQ by reason and replay from PostgreSQL without scanning the DLQ topic. They
-- stay set after a replay (a delivery that was ever dead-lettered), which is what
-- `harborctl dlq replay --force` selects on.
ALTER TABLE deliveries
    ADD COLUMN dead_letter_reason text
        CHECK (dead_letter_reason IN ('exhausted', 'gone', 'endpoint_unavailable')),
    ADD COLUMN dead_letter_source jsonb;

-- Attempts are numbered per retry schedule, and a replay starts the schedule again at 1; a
-- crash can also repeat an attempt. Each real request is a row, told apart by its start time.
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_pkey;
ALTER TABLE delivery_attempts ADD PRIMARY KEY (delivery_id, started_at, attempt);

-- A replay is recorded when it starts and marked complete at the end; an incomplete one is
-- resumed by running the same selection again.
ALTER TABLE replays
    ADD COLUMN kind text NOT NULL DEFAULT 'delivery' CHECK (kind IN ('delivery', 'dlq', 'events')),
    ADD COLUMN completed_at timestamptz;
CREATE INDEX replays_kind_filter ON replays (kind, created_at DESC);
