-- Dead letters: an index of what sits in the governance.<flow>.dlq topics, so operators can
-- query, replay and purge them. Rows are marked, never deleted, when replayed or purged.
CREATE TABLE dead_letters (
    id                  uuid PRIMARY KEY,     -- derived from the dead letter's topic position
    queue               text NOT NULL,        -- the flow, e.g. 'policy'
    job_id              uuid,                 -- NULL when the message was unreadable
    job_type            text,
    envelope            jsonb,                -- the original envelope (credentials stay encrypted)
    raw_excerpt         text,                 -- the start of an unreadable message
    error               jsonb NOT NULL,       -- {type, message, stack}
    attempts            integer NOT NULL DEFAULT 0,
    original_topic      text NOT NULL,
    original_partition  integer NOT NULL,
    original_offset     bigint NOT NULL,
    dlq_partition       integer NOT NULL,
    dlq_offset          bigint NOT NULL,
    failed_at           timestamptz NOT NULL,
    status              text NOT NULL DEFAULT 'UNRESOLVED'
                        CHECK (status IN ('UNRESOLVED', 'RETRIED', 'PURGED')),
    retried_job_id      uuid,
    resolved_at         timestamptz,
    resolved_by         uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_position UNIQUE (queue, dlq_partition, dlq_offset)
);
CREATE INDEX dead_letters_queue_idx ON dead_letters (queue, status, failed_at DESC);
CREATE INDEX dead_letters_job_type_idx ON dead_letters (queue, job_type, failed_at DESC);
CREATE INDEX dead_letters_job_idx ON dead_letters (job_id) WHERE job_id IS NOT NULL;

-- A replayed job points back at the dead letter it came from.
ALTER TABLE jobs ADD COLUMN retry_of uuid REFERENCES dead_letters (id);
