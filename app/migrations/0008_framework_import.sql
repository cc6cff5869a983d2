-- 0008: what control-framework imports need: richer controls, their history, families, import runs.

-- The source's own id and display label (OSCAL: id 'ac-2.1', label 'AC-2(1)'; ref_id is the label),
-- the node's kind and depth in the tree, whether it is assessed (CISO Assistant leaves), parameters,
-- links and other facts, and a hash of all of it: an import compares hashes to tell unchanged from
-- updated. parent_ref names the parent by ref_id; parent_id is resolved from it once the whole
-- file is in, so rows may arrive in any order.
ALTER TABLE controls
    ADD COLUMN source_id     text,
    ADD COLUMN kind          text NOT NULL DEFAULT 'control',   -- control, enhancement, or a tree level
    ADD COLUMN depth         integer NOT NULL DEFAULT 1,
    ADD COLUMN assessable    boolean NOT NULL DEFAULT true,
    ADD COLUMN parent_ref    text,
    ADD COLUMN params        jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN links         jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN properties    jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN content_hash  text;
CREATE INDEX controls_search_idx ON controls USING gin (to_tsvector('english', ref_id || ' ' || title || ' ' || statement));

-- The previous version of a control each time an import changed it.
CREATE TABLE control_history (
    id            bigserial PRIMARY KEY,
    control_id    uuid NOT NULL REFERENCES controls (id) ON DELETE CASCADE,
    import_id     uuid NOT NULL,
    previous      jsonb NOT NULL,            -- the row's content fields before the change
    replaced_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX control_history_control_idx ON control_history (control_id, replaced_at DESC);

-- Families (OSCAL groups; the top level of a CISO Assistant tree; a CSV family column).
CREATE TABLE control_families (
    framework_id  uuid NOT NULL REFERENCES frameworks (id) ON DELETE CASCADE,
    ref_id        text NOT NULL,
    title         text NOT NULL,
    sort_key      text COLLATE "C" NOT NULL,
    PRIMARY KEY (framework_id, ref_id)
);

-- One row per import run: what was read, what it changed, where its validation report is.
CREATE TABLE framework_imports (
    id              uuid PRIMARY KEY,
    framework_id    uuid REFERENCES frameworks (id) ON DELETE CASCADE,
    job_id          uuid NOT NULL,
    s3_key          text NOT NULL,
    format          text NOT NULL,
    status          text NOT NULL DEFAULT 'RUNNING' CHECK (status IN ('RUNNING', 'COMPLETED', 'FAILED')),
    created         integer NOT NULL DEFAULT 0,
    updated         integer NOT NULL DEFAULT 0,
    unchanged       integer NOT NULL DEFAULT 0,
    rejected        integer NOT NULL DEFAULT 0,
    report_key      text,
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX framework_imports_framework_idx ON framework_imports (framework_id, started_at DESC);
