-- 0007: resumable policy distribution, recipient snapshots, e-mail deliveries, shared rate limits.

-- How a DISTRIBUTE_POLICY job splits its audience, and which parts are done. The first attempt cuts the
-- whole user-id space into consecutive ranges (after_user_id, through_user_id] of about a chunk of
-- recipients each; the last range ends at the largest uuid, so the ranges cover everyone, including users
-- added later. A range's rows, its notification job rows and its done_at commit in one transaction;
-- produced_at is set once Kafka acknowledged the range's notification messages. A retried or redelivered
-- job redoes only ranges without produced_at (a no-op for rows already written), not the whole audience.
CREATE TABLE distribution_checkpoints (
    job_id          uuid PRIMARY KEY,
    policy_id       uuid NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    policy_version  integer NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,     -- > 1: an attempt resumed an earlier one's work
    finished_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE distribution_chunks (
    job_id                 uuid NOT NULL REFERENCES distribution_checkpoints (job_id) ON DELETE CASCADE,
    seq                    integer NOT NULL,
    after_user_id          uuid NOT NULL,
    through_user_id        uuid NOT NULL,
    recipients             integer,
    assignments_created    integer,
    delivery_logs_created  integer,
    notifications_created  integer,
    notification_jobs      integer,
    done_at                timestamptz,
    produced_at            timestamptz,
    PRIMARY KEY (job_id, seq)
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
