-- 0004: generated artefacts stored in S3: reports and audit packages.

CREATE TABLE reports (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    report_type   text NOT NULL,
    format        text NOT NULL CHECK (format IN ('PDF', 'XLSX', 'CSV', 'JSON')),
    status        text NOT NULL DEFAULT 'QUEUED'
                  CHECK (status IN ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED')),
    parameters    jsonb NOT NULL DEFAULT '{}'::jsonb,
    s3_key        text,
    content_type  text,
    size_bytes    bigint CHECK (size_bytes >= 0),
    requested_by  uuid,                  -- no FK, as for jobs.requested_by
    job_id        uuid,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    -- A COMPLETED report must point at its object, or downloads would 404.
    CONSTRAINT reports_completed_has_object CHECK (status <> 'COMPLETED' OR s3_key IS NOT NULL)
);
CREATE INDEX reports_requested_by_idx ON reports (requested_by, created_at DESC, id DESC);
CREATE INDEX reports_status_idx ON reports (status, created_at DESC);
CREATE INDEX reports_job_idx ON reports (job_id) WHERE job_id IS NOT NULL;
CREATE TRIGGER reports_updated_at BEFORE UPDATE ON reports
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A zip of an assessment's evidence, control results and manifest for external auditors.
CREATE TABLE audit_packages (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    assessment_id  uuid REFERENCES assessments (id) ON DELETE SET NULL,
    framework_id   uuid REFERENCES frameworks (id) ON DELETE SET NULL,
    status         text NOT NULL DEFAULT 'QUEUED'
                   CHECK (status IN ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED')),
    manifest       jsonb,
    s3_key         text,
    size_bytes     bigint CHECK (size_bytes >= 0),
    sha256         text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    requested_by   uuid,
    job_id         uuid,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    CONSTRAINT audit_packages_completed_has_object CHECK (status <> 'COMPLETED' OR s3_key IS NOT NULL)
);
CREATE INDEX audit_packages_assessment_idx ON audit_packages (assessment_id, created_at DESC);
CREATE INDEX audit_packages_requested_by_idx ON audit_packages (requested_by, created_at DESC);
CREATE TRIGGER audit_packages_updated_at BEFORE UPDATE ON audit_packages
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
