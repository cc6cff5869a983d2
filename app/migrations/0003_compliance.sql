-- 0003: control frameworks, assessments and their schedules, evidence, and integrations.

CREATE TABLE frameworks (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL CHECK (btrim(name) <> ''),      -- e.g. 'NIST SP 800-53'
    version      text NOT NULL CHECK (btrim(version) <> ''),   -- e.g. 'rev5'
    publisher    text,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT frameworks_name_version UNIQUE (name, version)
);
CREATE TRIGGER frameworks_updated_at BEFORE UPDATE ON frameworks
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE controls (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    framework_id  uuid NOT NULL REFERENCES frameworks (id) ON DELETE CASCADE,
    ref_id        text NOT NULL CHECK (btrim(ref_id) <> ''),   -- the framework's own id, e.g. 'AC-2(1)'
    parent_id     uuid,                                         -- enhancement -> base control
    family        text,                                         -- e.g. 'AC'
    title         text NOT NULL,
    statement     text NOT NULL DEFAULT '',
    guidance      text NOT NULL DEFAULT '',
    -- Catalogue order; ref_ids do not sort naturally ('AC-10' < 'AC-2' as text). The importer writes a
    -- zero-padded key; collation "C" makes ORDER BY sort_key bytewise and locale-independent.
    sort_key      text COLLATE "C" NOT NULL,
    withdrawn     boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT controls_framework_ref UNIQUE (framework_id, ref_id),
    -- Target of the composite parent FK below, which keeps a parent inside the same framework.
    CONSTRAINT controls_framework_id UNIQUE (framework_id, id),
    -- Deferred so an importer may insert a catalogue in any order inside one transaction.
    CONSTRAINT controls_parent_same_framework FOREIGN KEY (framework_id, parent_id)
        REFERENCES controls (framework_id, id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX controls_framework_sort_idx ON controls (framework_id, sort_key);
CREATE INDEX controls_parent_idx ON controls (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX controls_framework_family_idx ON controls (framework_id, family);
CREATE TRIGGER controls_updated_at BEFORE UPDATE ON controls
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE assessment_schedules (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL,
    framework_id      uuid NOT NULL REFERENCES frameworks (id) ON DELETE CASCADE,
    business_unit_id  uuid REFERENCES business_units (id) ON DELETE CASCADE,
    cron              text NOT NULL CHECK (btrim(cron) <> ''),    -- validated with croniter by the API
    timezone          text NOT NULL DEFAULT 'UTC',                -- IANA name; cron is evaluated in it
    enabled           boolean NOT NULL DEFAULT true,
    next_run_at       timestamptz,
    last_run_at       timestamptz,
    created_by        uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- The scheduler's "what is due" scan.
CREATE INDEX assessment_schedules_due_idx ON assessment_schedules (next_run_at) WHERE enabled;
CREATE TRIGGER assessment_schedules_updated_at BEFORE UPDATE ON assessment_schedules
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE assessments (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name              text NOT NULL,
    framework_id      uuid NOT NULL REFERENCES frameworks (id) ON DELETE RESTRICT,
    business_unit_id  uuid REFERENCES business_units (id) ON DELETE SET NULL,
    schedule_id       uuid REFERENCES assessment_schedules (id) ON DELETE SET NULL,
    status            text NOT NULL DEFAULT 'PLANNED'
                      CHECK (status IN ('PLANNED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED')),
    -- Set when a scheduler fire created this assessment: with the schedule id it makes that creation
    -- idempotent (the unique index below).
    scheduled_for     timestamptz,
    scope             jsonb NOT NULL DEFAULT '{}'::jsonb,
    job_id            uuid,
    created_by        uuid REFERENCES users (id) ON DELETE SET NULL,
    started_at        timestamptz,
    completed_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX assessments_schedule_slot_idx ON assessments (schedule_id, scheduled_for)
    WHERE schedule_id IS NOT NULL AND scheduled_for IS NOT NULL;
CREATE INDEX assessments_framework_idx ON assessments (framework_id, created_at DESC);
CREATE INDEX assessments_status_idx ON assessments (status, created_at DESC);
CREATE TRIGGER assessments_updated_at BEFORE UPDATE ON assessments
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Per-control outcome of an assessment.
CREATE TABLE assessment_results (
    assessment_id  uuid NOT NULL REFERENCES assessments (id) ON DELETE CASCADE,
    control_id     uuid NOT NULL REFERENCES controls (id) ON DELETE CASCADE,
    status         text NOT NULL DEFAULT 'NOT_TESTED'
                   CHECK (status IN ('NOT_TESTED', 'PASS', 'FAIL', 'NOT_APPLICABLE')),
    notes          text NOT NULL DEFAULT '',
    assessed_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (assessment_id, control_id)
);
CREATE INDEX assessment_results_control_idx ON assessment_results (control_id);
CREATE TRIGGER assessment_results_updated_at BEFORE UPDATE ON assessment_results
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE integrations (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type              text NOT NULL CHECK (type ~ '^[A-Z][A-Z0-9_]*$'),   -- e.g. 'AWS', 'GITHUB', 'OKTA'
    name              text NOT NULL,
    -- Credentials and settings, encrypted by the application (PAYLOAD_ENCRYPTION_KEY); the database
    -- never sees them in clear.
    encrypted_config  bytea NOT NULL,
    enabled           boolean NOT NULL DEFAULT true,
    last_sync_at      timestamptz,
    last_sync_status  text CHECK (last_sync_status IN ('COMPLETED', 'FAILED')),
    created_by        uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT integrations_type_name UNIQUE (type, name)
);
CREATE TRIGGER integrations_updated_at BEFORE UPDATE ON integrations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE evidence (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    control_id      uuid REFERENCES controls (id) ON DELETE SET NULL,
    assessment_id   uuid REFERENCES assessments (id) ON DELETE SET NULL,
    integration_id  uuid REFERENCES integrations (id) ON DELETE SET NULL,
    title           text NOT NULL,
    source          text NOT NULL DEFAULT 'MANUAL' CHECK (source IN ('MANUAL', 'INTEGRATION')),
    status          text NOT NULL DEFAULT 'COLLECTED'
                    CHECK (status IN ('PENDING', 'COLLECTED', 'FAILED', 'REJECTED')),
    s3_key          text,
    content_type    text,
    size_bytes      bigint CHECK (size_bytes >= 0),
    sha256          text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    collected_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    collected_at    timestamptz NOT NULL DEFAULT now(),
    job_id          uuid,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX evidence_control_idx ON evidence (control_id, collected_at DESC) WHERE control_id IS NOT NULL;
CREATE INDEX evidence_assessment_idx ON evidence (assessment_id, collected_at DESC)
    WHERE assessment_id IS NOT NULL;
CREATE INDEX evidence_integration_idx ON evidence (integration_id, collected_at DESC)
    WHERE integration_id IS NOT NULL;
