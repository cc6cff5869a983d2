-- One row per webhook notification delivered (2xx), so a redelivered job does not post again.
CREATE TABLE webhook_deliveries (
    idempotency_key  text PRIMARY KEY,
    url              text NOT NULL,
    status_code      integer NOT NULL,
    job_id           uuid NOT NULL,
    delivered_at     timestamptz NOT NULL DEFAULT now()
);
