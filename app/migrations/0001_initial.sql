-- 0001: organisation, identity and the job-tracking tables every agent writes to.
--
-- Conventions for all migrations:
--   * ids are uuid (gen_random_uuid() is built into PostgreSQL 13+), except append-only logs (bigserial);
--   * every timestamp is timestamptz;
--   * status columns are upper-case text with a CHECK listing the allowed values: easier to extend in a
--     later migration than a PostgreSQL enum, and readable in psql;
--   * tables whose rows change carry updated_at, maintained by the set_updated_at() trigger so no writer
--     can forget it.
-- Never edit this file once applied anywhere: migrate() refuses a changed checksum. Add 000N_*.sql instead.

CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------------------------------------------
-- Organisation and identity
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE business_units (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (btrim(name) <> ''),
    parent_id   uuid REFERENCES business_units (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER business_units_updated_at BEFORE UPDATE ON business_units
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE users (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Stored normalised (lower-case, trimmed) so the plain UNIQUE is case-insensitive and usable as an
    -- ON CONFLICT target; writers lower() the address before inserting.
    email             text NOT NULL UNIQUE CHECK (email = lower(btrim(email)) AND email LIKE '%_@_%'),
    display_name      text NOT NULL,
    -- Nullable: service accounts and newly provisioned users may belong to no unit yet.
    business_unit_id  uuid REFERENCES business_units (id) ON DELETE SET NULL,
    active            boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- Policy targeting selects active users of given units.
CREATE INDEX users_business_unit_active_idx ON users (business_unit_id) WHERE active;
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Roles are rows, not an enum, so a new domain role is an INSERT in a migration, not a type change.
CREATE TABLE roles (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Z][A-Z0-9_]*$'),
    kind         text NOT NULL CHECK (kind IN ('PLATFORM', 'DOMAIN')),
    description  text NOT NULL DEFAULT ''
);
INSERT INTO roles (name, kind, description) VALUES
    ('USER',               'PLATFORM', 'Can sign in and act on their own items'),
    ('ADMIN',              'PLATFORM', 'Administers the organisation'),
    ('SUPER_ADMIN',        'PLATFORM', 'Operates the platform across organisations'),
    ('COMPLIANCE_OFFICER', 'DOMAIN',   'Authors and publishes policies, runs assessments'),
    ('AUDITOR',            'DOMAIN',   'Reads evidence and downloads audit packages'),
    ('EMPLOYEE',           'DOMAIN',   'Receives and acknowledges policies');

CREATE TABLE user_roles (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL REFERENCES roles (name),
    granted_at  timestamptz NOT NULL DEFAULT now(),
    granted_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    PRIMARY KEY (user_id, role)
);
-- Targeting goes from a role to its users; the primary key serves the other direction.
CREATE INDEX user_roles_role_user_idx ON user_roles (role, user_id);

-- ---------------------------------------------------------------------------------------------------
-- Jobs: one row per submitted asynchronous job, one job_attempts row per delivery of it to a worker.
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,   -- chosen by the submitter so the Kafka message and row agree
    job_type        text NOT NULL,
    flow            text NOT NULL,
    -- The values of models.JobState. ACTIVE = a worker is running it; COMPLETED, FAILED, DEAD
    -- (retries exhausted, dead-lettered) and CANCELLED are final.
    status          text NOT NULL DEFAULT 'QUEUED'
                    CHECK (status IN ('QUEUED', 'ACTIVE', 'RETRYING',
                                      'COMPLETED', 'FAILED', 'DEAD', 'CANCELLED')),
    attempt         integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts    integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- No FK to users: jobs are also requested by schedulers and service accounts, and the job history
    -- must outlive a deleted user.
    requested_by    uuid,
    correlation_id  text,
    result          jsonb,
    error           jsonb,
    progress        smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),   -- percent
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- Listing is newest first with keyset pagination on (created_at, id), optionally filtered by type and/or
-- status or by requester.
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_type_status_created_idx ON jobs (job_type, status, created_at DESC, id DESC);
CREATE INDEX jobs_type_created_idx ON jobs (job_type, created_at DESC, id DESC);
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_requested_by_created_idx ON jobs (requested_by, created_at DESC, id DESC)
    WHERE requested_by IS NOT NULL;
CREATE INDEX jobs_correlation_idx ON jobs (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TRIGGER jobs_updated_at BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE job_attempts (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL CHECK (attempt >= 0),
    -- The job's state as this attempt saw it (jobs.status values, QUEUED excepted).
    state        text NOT NULL DEFAULT 'ACTIVE'
                 CHECK (state IN ('ACTIVE', 'RETRYING', 'COMPLETED', 'FAILED', 'DEAD', 'CANCELLED')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    worker       text,
    error        jsonb,
    -- A redelivered message re-runs the same attempt number: the key makes the insert idempotent.
    PRIMARY KEY (job_id, attempt)
);

-- ---------------------------------------------------------------------------------------------------
-- Audit log: append-only record of who did what.
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE audit_log (
    id               bigserial PRIMARY KEY,
    event_type       text NOT NULL,
    actor_id         uuid,            -- no FK: the trail must survive the actor's deletion; NULL = system
    entity_type      text,
    entity_id        uuid,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Set by job handlers (e.g. '<job_id>:policy.published') and written with ON CONFLICT DO NOTHING,
    -- so a redelivered job records its event once. NULL for events that need no de-duplication.
    idempotency_key  text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id, created_at DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_id, created_at DESC) WHERE actor_id IS NOT NULL;
CREATE INDEX audit_log_event_idx ON audit_log (event_type, created_at DESC);
CREATE INDEX audit_log_created_idx ON audit_log (created_at DESC);

-- Rows are evidence for auditors: refuse changes and deletions. (TRUNCATE, an owner-only operation, still
-- works for test clean-up.)
CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- ---------------------------------------------------------------------------------------------------
-- Timer claims: every worker's timer fires, the one whose INSERT wins runs the slot.
--   INSERT INTO scheduled_runs (job_name, slot, claimed_by) VALUES (...) ON CONFLICT DO NOTHING
-- ---------------------------------------------------------------------------------------------------

CREATE TABLE scheduled_runs (
    job_name    text NOT NULL,
    slot        timestamptz NOT NULL,
    claimed_by  text,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    job_id      uuid,                  -- the job the winner submitted for this slot, if any
    PRIMARY KEY (job_name, slot)
);
