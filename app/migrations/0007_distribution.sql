-- 0007: resumable policy distribution, recipient snapshots, e-mail deliveries, shared rate limits.

-- Where a DISTRIBUTE_POLICY job got to. Recipients are walked in user-id order in chunks; each chunk's
-- rows and its notification job rows commit with this checkpoint. written_through: the last user whose
-- rows are committed; produced_through: the last user whose notification messages Kafka acknowledged.
-- A redelivered job resumes after produced_through (redoing at most one idempotent chunk), not from zero.
CREATE TABLE distribution_checkpoints (
    job_id                 uuid PRIMARY KEY,
    policy_id              uuid NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    policy_version         integer NOT NULL,
    written_through        uuid,            -- NULL: no chunk committed yet
    produced_through       uuid,
    recipients             integer NOT NULL DEFAULT 0,
    assignments_created    integer NOT NULL DEFAULT 0,
    delivery_logs_created  integer NOT NULL DEFAULT 0,
    notification_jobs      integer NOT NULL DEFAULT 0,
    chunks                 integer NOT NULL DEFAULT 0,
    resumed                integer NOT NULL DEFAULT 0,   -- how many times an attempt picked this up
    finished_at            timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- A frozen audience an upstream service prepared (e.g. "everyone who attended training X"), referenced
-- by DISTRIBUTE_POLICY.recipient_snapshot_id instead of putting 100k ids in a Kafka message.
CREATE TABLE recipient_snapshots (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    description  text NOT NULL DEFAULT '',
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE recipient_snapshot_members (
    snapshot_id  uuid NOT NULL REFERENCES recipient_snapshots (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (snapshot_id, user_id)
);

-- One row per e-mail (event, recipient): written SENDING before the SMTP transaction and SENT after
-- the server accepted it, so a redelivered job skips SENT rows. A SENDING row found by a later attempt
-- is the one open window (crash between the server's 250 and our update): it is sent again, with the
-- same Message-ID. REJECTED: the server refused the recipient for good (5xx); not retried.
CREATE TABLE email_deliveries (
    idempotency_key  text PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    to_address       text NOT NULL,
    event_type       text NOT NULL,
    message_id       text NOT NULL,
    status           text NOT NULL DEFAULT 'SENDING' CHECK (status IN ('SENDING', 'SENT', 'REJECTED')),
    error            text,                 -- the server's permanent refusal, for REJECTED
    attempts         integer NOT NULL DEFAULT 1,
    job_id           uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);
CREATE INDEX email_deliveries_user_idx ON email_deliveries (user_id, created_at DESC);

-- Deployment-wide rate limits (GCRA): each limiter keeps its theoretical arrival time on PostgreSQL's
-- clock, which every pod shares, so N pods together stay within the limit.
CREATE TABLE rate_limits (
    name  text PRIMARY KEY,
    tat   timestamptz NOT NULL DEFAULT now()
);

-- Dashboard counters for a policy, kept current by the distribution and notification jobs.
ALTER TABLE policies
    ADD COLUMN last_distributed_at  timestamptz,
    ADD COLUMN recipients_count     integer NOT NULL DEFAULT 0;
