-- 0009: what reports and exports need: partial results, report file names, export records.

-- An assessor may find a control partly in place. Reports map result to implementation status:
-- PASS -> IMPLEMENTED, PARTIAL -> PARTIALLY_IMPLEMENTED, FAIL -> NOT_IMPLEMENTED,
-- NOT_APPLICABLE -> NOT_APPLICABLE, NOT_TESTED (or no result) -> NOT_ASSESSED.
ALTER TABLE assessment_results DROP CONSTRAINT assessment_results_status_check;
ALTER TABLE assessment_results ADD CONSTRAINT assessment_results_status_check
    CHECK (status IN ('NOT_TESTED', 'PASS', 'PARTIAL', 'FAIL', 'NOT_APPLICABLE'));
-- A report reads the newest result per control of a framework's assessments.
CREATE INDEX assessments_framework_unit_idx ON assessments (framework_id, business_unit_id);

-- The name a download is saved under (sanitised, never a path), and how far the job got (percent), so
-- GET /reports/{id}/status is one row read on any worker.
ALTER TABLE reports
    ADD COLUMN file_name text,
    ADD COLUMN progress smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100);

-- One row per EXPORT_DATA request; the file lives at s3_key, like a report's.
CREATE TABLE exports (
    id            uuid PRIMARY KEY,
    entity        text NOT NULL,
    format        text NOT NULL CHECK (format IN ('XLSX', 'CSV', 'PDF')),
    status        text NOT NULL DEFAULT 'QUEUED'
                  CHECK (status IN ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED')),
    parameters    jsonb NOT NULL DEFAULT '{}'::jsonb,
    s3_key        text,
    file_name     text,
    content_type  text,
    size_bytes    bigint CHECK (size_bytes >= 0),
    row_count     bigint CHECK (row_count >= 0),
    progress      smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    requested_by  uuid,                  -- no FK, as for jobs.requested_by
    job_id        uuid,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    CONSTRAINT exports_completed_has_object CHECK (status <> 'COMPLETED' OR s3_key IS NOT NULL)
);
CREATE INDEX exports_requested_by_idx ON exports (requested_by, created_at DESC, id DESC);
CREATE TRIGGER exports_updated_at BEFORE UPDATE ON exports
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
