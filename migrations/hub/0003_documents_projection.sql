-- Applying pushed changes (issue 3): per-patient Automerge documents, the
-- patients/encounters projection read from them, and which sites hold which
-- patients (what pull sends them). See README.md: append-only once released.

-- One saved Automerge document per patient, rebuilt from the `changes` log.
-- `incomplete` is true while some change of the log waits for a dependency
-- the hub has not received: Automerge queues such a change in memory and
-- `save()` leaves it out, so the next apply for that patient replays the
-- patient's whole log before its new changes (applying a change twice is a
-- no-op).
CREATE TABLE documents (
    patient_id uuid        PRIMARY KEY,
    doc        bytea       NOT NULL,
    incomplete boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Read model of the documents, rewritten in the transaction that applies
-- their changes. `site_id` is the site whose push first named the patient;
-- `search` is the folded (lower-case, accent-free) words of the names and
-- national id, `phone_digits` the digits of the phone, for admin search.
CREATE TABLE patients (
    id                    uuid        PRIMARY KEY REFERENCES documents (patient_id),
    site_id               uuid        NOT NULL REFERENCES sites (id),
    given_name            text        NOT NULL,
    family_name           text        NOT NULL,
    sex                   text        NOT NULL,
    birth_date            date        NOT NULL,
    birth_date_estimated  boolean     NOT NULL,
    phone                 text,
    village               text        NOT NULL,
    national_id           text,
    whatsapp_consent      boolean     NOT NULL,
    whatsapp_consent_date date,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    last_device_id        uuid        NOT NULL REFERENCES devices (id),
    search                text        NOT NULL,
    phone_digits          text
);
CREATE INDEX patients_phone_digits ON patients (phone_digits);

-- `device_id` is the actor that created the encounter (an edge's actor id
-- is its device id), `site_id` that device's site when the hub knows it.
CREATE TABLE encounters (
    id            uuid             PRIMARY KEY,
    patient_id    uuid             NOT NULL REFERENCES patients (id),
    site_id       uuid             NOT NULL REFERENCES sites (id),
    device_id     uuid             NOT NULL,
    date          date             NOT NULL,
    kind          text             NOT NULL,
    complaint     text             NOT NULL,
    diagnosis     text             NOT NULL,
    icd10         text,
    weight_kg     double precision,
    temperature_c double precision,
    bp_systolic   integer,
    bp_diastolic  integer,
    notes         text             NOT NULL,
    clinician     text             NOT NULL,
    age_group     text             NOT NULL,
    recorded_at   timestamptz      NOT NULL
);
CREATE INDEX encounters_patient_id ON encounters (patient_id, date DESC, recorded_at DESC);

-- The patients a site holds: every patient one of its devices pushed a
-- change to. Pull sends a device the changes of these patients only.
CREATE TABLE site_patients (
    site_id    uuid        NOT NULL REFERENCES sites (id),
    patient_id uuid        NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, patient_id)
);
CREATE INDEX site_patients_patient_id ON site_patients (patient_id);
