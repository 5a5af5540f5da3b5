-- Payloads as text, and the `undeliverable` dead letter.
--
-- events.payload becomes the exact JSON text the publisher sent (ADR 0002). As jsonb it could
-- not hold what JSON can say and receivers accept — a "\u0000" in a string, a number beyond
-- PostgreSQL's numeric range — so such an event was accepted and then choked the fan-out, and
-- it normalised what it could hold: numbers rewritten (1e300 became 301 digits), keys reordered.
-- Text stores the bytes the gateway checked and the receiver gets. Existing rows keep their
-- jsonb rendering, which is valid JSON.
--
-- Rollout: this changes a column's type, the one exception to expand-then-contract
-- (docs/database.md): previous-release readers of events (the gateway's event reads, harborctl
-- replays) fail on it until they are replaced; writers keep working (jsonb is assigned to text).
ALTER TABLE events ALTER COLUMN payload TYPE text USING payload::text;

-- A delivery the platform could not forward (a record the broker refused, an internal error).
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_dead_letter_reason_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_dead_letter_reason_check
    CHECK (dead_letter_reason IN ('exhausted', 'gone', 'endpoint_unavailable', 'undeliverable'));
