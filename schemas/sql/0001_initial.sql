-- Harborhook initial schema. Ids are UUIDs; the typed prefixes (ten_, ep_, ...) live only in
-- the API and on Kafka. Timestamps are timestamptz. See docs/database.md for the reasoning,
-- the queries each index serves, and the retention design.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE endpoints (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                 text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    description         text NOT NULL DEFAULT '',
    signature_scheme    text NOT NULL DEFAULT 'standard_webhooks'
                        CHECK (signature_scheme IN ('standard_webhooks', 'harborhook_legacy')),
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text,
    disabled_at         timestamptz,
    max_in_flight       integer NOT NULL DEFAULT 10 CHECK (max_in_flight BETWEEN 1 AND 1000),
    rate_limit_per_sec  double precision CHECK (rate_limit_per_sec > 0),
    connect_timeout_ms  integer NOT NULL DEFAULT 5000 CHECK (connect_timeout_ms BETWEEN 100 AND 60000),
    timeout_ms          integer NOT NULL DEFAULT 15000 CHECK (timeout_ms BETWEEN 100 AND 300000),
    headers             jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(headers) = 'object'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (enabled OR disabled_reason IS NOT NULL)
);
-- Listing a tenant's endpoints, newest first, with a (created_at, id) cursor.
CREATE INDEX endpoints_tenant_created ON endpoints (tenant_id, created_at DESC, id DESC);

-- Signing secrets. The current secret has expires_at NULL; on rotation the previous one gets
-- expires_at = now() + overlap and keeps signing beside the new one until then.
CREATE TABLE endpoint_secrets (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id  uuid NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    secret       text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz
);
CREATE INDEX endpoint_secrets_endpoint ON endpoint_secrets (endpoint_id, created_at DESC);
CREATE UNIQUE INDEX endpoint_secrets_one_current ON endpoint_secrets (endpoint_id)
    WHERE expires_at IS NULL;

CREATE TABLE subscriptions (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    endpoint_id         uuid NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    event_type_pattern  text NOT NULL CHECK (length(event_type_pattern) BETWEEN 1 AND 257),
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_type_pattern)
);
CREATE INDEX subscriptions_tenant_created ON subscriptions (tenant_id, created_at DESC, id DESC);

-- Events as published. No foreign key to tenants: events are history, kept by retention, and
-- direct producers' events are recorded by fan-out after validation.
CREATE TABLE events (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,
    idempotency_key  text,
    ordering_key     text,
    created_at       timestamptz NOT NULL
);
-- Listing with filters on type and time, newest first, cursor on (created_at, id).
CREATE INDEX events_tenant_created ON events (tenant_id, created_at DESC, id DESC);
CREATE INDEX events_tenant_type_created ON events (tenant_id, event_type, created_at DESC, id DESC);
-- Retention deletes by age.
CREATE INDEX events_created ON events (created_at);

-- (tenant, idempotency key) -> event, for the idempotency window. The primary key makes
-- concurrent duplicates collide in the database, whichever gateway replica they reach.
-- state: 'pending' while the first request is producing, 'published' once the broker acked,
-- 'failed' when producing failed (the next request with the key takes over the same event id).
-- request_hash tells a retry of the same request from a reuse of the key for another one.
CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    event_id      uuid NOT NULL,
    request_hash  text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'published', 'failed')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

CREATE TABLE deliveries (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    event_id          uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id       uuid NOT NULL,
    event_type        text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivered', 'retrying', 'dead_lettered', 'skipped')),
    attempts          integer NOT NULL DEFAULT 0,
    last_status_code  integer,
    last_error_class  text,
    skip_reason       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    UNIQUE (event_id, endpoint_id)
);
-- GET /v1/events/{id}/deliveries is served by the unique (event_id, endpoint_id) index.
-- The DLQ views (all tenants, one tenant, one endpoint) read this partial index; it holds only
-- dead-lettered rows, so fan-out's inserts of pending rows barely touch it. No general
-- per-endpoint index: no route needs one, and every index costs each of the many inserts.
CREATE INDEX deliveries_dead_lettered ON deliveries (tenant_id, updated_at DESC)
    WHERE status = 'dead_lettered';

CREATE TABLE delivery_attempts (
    delivery_id       uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt           integer NOT NULL CHECK (attempt >= 1),
    tenant_id         uuid NOT NULL,
    endpoint_id       uuid NOT NULL,
    started_at        timestamptz NOT NULL,
    duration_ms       integer NOT NULL,
    status_code       integer,
    error_class       text,
    error             text,
    response_excerpt  text CHECK (octet_length(response_excerpt) <= 1024),
    PRIMARY KEY (delivery_id, attempt)
);
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at);

-- Operator replays: who re-enqueued what, when, why. One row per replay operation; a
-- single-delivery replay through the API is an operation of one.
CREATE TABLE replays (
    id            uuid PRIMARY KEY,
    tenant_id     uuid,
    requested_by  text NOT NULL,
    reason        text NOT NULL,
    filter        jsonb NOT NULL DEFAULT '{}'::jsonb,
    count         integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replays_created ON replays (created_at DESC);
