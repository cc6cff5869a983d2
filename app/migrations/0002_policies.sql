-- 0002: policies, their distribution to users, and user notifications.
-- Channels are checked for shape only: the set of channels is the application's Channel enum and
-- grows without a migration.

CREATE TABLE policies (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title                     text NOT NULL CHECK (btrim(title) <> ''),
    body                      text NOT NULL DEFAULT '',
    -- Bumped on each re-publication; assignments and delivery logs pin the version they were made for.
    version                   integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    status                    text NOT NULL DEFAULT 'DRAFT'
                              CHECK (status IN ('DRAFT', 'PUBLISHED', 'ARCHIVED')),
    -- Targeting: active users holding any of target_roles AND in any of target_business_unit_ids.
    -- An empty array leaves that dimension unrestricted; with both empty the policy targets nobody
    -- (distribution refuses it rather than notify the whole organisation by accident).
    target_roles              text[] NOT NULL DEFAULT '{}',
    target_business_unit_ids  uuid[] NOT NULL DEFAULT '{}',
    -- Days a user has to acknowledge after assignment (due_at = assigned + this).
    acknowledgment_days       integer NOT NULL DEFAULT 30 CHECK (acknowledgment_days > 0),
    created_by                uuid REFERENCES users (id) ON DELETE SET NULL,
    published_at              timestamptz,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT policies_published_has_timestamp
        CHECK (status <> 'PUBLISHED' OR published_at IS NOT NULL)
);
CREATE INDEX policies_status_idx ON policies (status, updated_at DESC);
CREATE TRIGGER policies_updated_at BEFORE UPDATE ON policies
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE policy_assignments (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    policy_id        uuid NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    policy_version   integer NOT NULL CHECK (policy_version >= 1),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'PENDING_ACKNOWLEDGMENT'
                     CHECK (status IN ('PENDING_ACKNOWLEDGMENT', 'ACKNOWLEDGED', 'OVERDUE')),
    due_at           timestamptz,
    acknowledged_at  timestamptz,
    -- No FK to jobs: job rows may be pruned by retention while assignments live on.
    job_id           uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- A redelivered distribution job inserts with ON CONFLICT DO NOTHING against this key.
    CONSTRAINT policy_assignments_once UNIQUE (policy_id, policy_version, user_id)
);
CREATE INDEX policy_assignments_user_idx ON policy_assignments (user_id, status, due_at);
CREATE INDEX policy_assignments_policy_status_idx ON policy_assignments (policy_id, policy_version, status);
CREATE INDEX policy_assignments_job_idx ON policy_assignments (job_id) WHERE job_id IS NOT NULL;
-- The overdue sweep only ever scans pending rows by due date.
CREATE INDEX policy_assignments_pending_due_idx ON policy_assignments (due_at)
    WHERE status = 'PENDING_ACKNOWLEDGMENT';
CREATE TRIGGER policy_assignments_updated_at BEFORE UPDATE ON policy_assignments
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE delivery_logs (
    id              bigserial PRIMARY KEY,
    policy_id       uuid NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    policy_version  integer NOT NULL CHECK (policy_version >= 1),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel ~ '^[A-Z][A-Z0-9_]*$'),   -- e.g. 'EMAIL', 'IN_APP'
    status          text NOT NULL DEFAULT 'QUEUED'
                    CHECK (status IN ('QUEUED', 'SENT', 'DELIVERED', 'FAILED', 'SKIPPED')),
    job_id          uuid,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- One delivery per channel per user per policy version, however often the job is redelivered.
    CONSTRAINT delivery_logs_once UNIQUE (policy_id, policy_version, user_id, channel)
);
CREATE INDEX delivery_logs_user_idx ON delivery_logs (user_id, created_at DESC);
CREATE INDEX delivery_logs_job_idx ON delivery_logs (job_id) WHERE job_id IS NOT NULL;

CREATE TABLE notifications (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    channel          text NOT NULL DEFAULT 'IN_APP' CHECK (channel ~ '^[A-Z][A-Z0-9_]*$'),
    title            text NOT NULL,
    body             text NOT NULL DEFAULT '',
    data             jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Derived from the triggering event (e.g. '<job_id>:<user_id>:policy.assigned'); the unique index
    -- turns a redelivered event into a no-op instead of a second notification.
    idempotency_key  text NOT NULL UNIQUE,
    read_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user_created_idx ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_user_unread_idx ON notifications (user_id, created_at DESC) WHERE read_at IS NULL;
