-- DHIS2 monthly reporting (issue 4). See README.md: append-only once released.

-- The DHIS2 organisation unit code of the clinic; `hub dhis2 resolve-mapping`
-- looks it up in DHIS2 and fills `dhis2_org_unit` (the uid) from it.
ALTER TABLE sites ADD COLUMN dhis2_org_unit_code text;

-- The mapping an admin saved or resolved through the UI or API. When this
-- row exists it wins over the mapping file (HUB_DHIS2_MAPPING, or the
-- shipped default); deleting it falls back to the file.
CREATE TABLE dhis2_mapping (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),  -- at most one row
    mapping    jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by uuid        REFERENCES users (id)
);

-- Every export of one site's values for one period. A worker claims a job by
-- row lock (`FOR UPDATE SKIP LOCKED`) and holds a lease (`lease_until`) while
-- it talks to DHIS2; a job whose lease ran out while `running` belongs to a
-- hub that died mid-job and is claimed again. `payload` is fixed at the first
-- attempt, with the id scheme it was written in, so every retry sends
-- exactly what is recorded even if the mapping changed since. `superseded_by`
-- names the later export of the same period and site whose values DHIS2
-- accepted (a pending earlier job is then not run at all: status superseded).
CREATE TABLE dhis2_export_jobs (
    id              uuid        PRIMARY KEY,
    period          text        NOT NULL,
    site_id         uuid        NOT NULL REFERENCES sites (id),
    dry_run         boolean     NOT NULL,
    status          text        NOT NULL CHECK (status IN
                        ('pending', 'running', 'succeeded', 'succeeded_with_conflicts', 'failed', 'superseded')),
    trigger         text        NOT NULL CHECK (trigger IN ('api', 'ui', 'cli', 'schedule', 'rerun')),
    requested_by    uuid        REFERENCES users (id),
    rerun_of        uuid        REFERENCES dhis2_export_jobs (id),
    superseded_by   uuid        REFERENCES dhis2_export_jobs (id),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    payload         jsonb,                  -- the dataValueSet sent
    id_scheme       text CHECK (id_scheme IN ('uid', 'code')),  -- how `payload` names objects (sent as idScheme)
    values_count    integer,
    response_status integer,                -- HTTP status of the last answer
    response        jsonb,                  -- the last answer as received (a JSON string when it was not JSON)
    import_count    jsonb,                  -- {imported, updated, ignored, deleted}
    conflicts       jsonb,                  -- [{error_code, object, message, property}]
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX dhis2_export_jobs_due ON dhis2_export_jobs (next_attempt_at) WHERE status IN ('pending', 'running');
CREATE INDEX dhis2_export_jobs_period_site ON dhis2_export_jobs (period, site_id, created_at DESC);
CREATE INDEX dhis2_export_jobs_created ON dhis2_export_jobs (created_at DESC);

-- One row per period the schedule exported: with several hub instances only
-- the one whose insert succeeds creates that month's jobs.
CREATE TABLE dhis2_schedule_runs (
    period text        PRIMARY KEY,
    run_at timestamptz NOT NULL DEFAULT now()
);

-- Encounters are counted by their clinical date and site.
CREATE INDEX encounters_site_date ON encounters (site_id, date);

-- New patients are counted by the site that registered them and when: a
-- site's export reads its own registrations instead of every patient.
CREATE INDEX patients_site_created ON patients (site_id, created_at);
