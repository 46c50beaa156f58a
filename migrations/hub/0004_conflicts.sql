-- Conflicts (issue 3): a field of a patient document written concurrently
-- on two devices keeps every value in Automerge (`get_all`); the hub records
-- each such field while it has more than one value. See README.md:
-- append-only once released.
--
-- `field` names a demographic key of the document root (`village`) or an
-- encounter field (`encounters.<id>.diagnosis`). `values` is a JSON array of
-- `{"value", "device_id", "actor", "winner"}`: each competing value, the
-- device whose actor wrote it (null when the actor is not a device id), and
-- whether Automerge picked it. At most one open conflict per field: a later
-- apply refreshes its values, and one that leaves a single value closes it
-- (`resolved_by` = 'merge', `resolution` = {"value": the value left}).
CREATE TABLE conflicts (
    id          uuid        PRIMARY KEY,
    patient_id  uuid        NOT NULL REFERENCES documents (patient_id),
    field       text        NOT NULL,
    "values"    jsonb       NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolved_by text,
    resolution  jsonb,
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);

CREATE UNIQUE INDEX conflicts_open_field ON conflicts (patient_id, field) WHERE resolved_at IS NULL;
CREATE INDEX conflicts_detected ON conflicts (detected_at DESC);
