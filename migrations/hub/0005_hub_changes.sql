-- Hub-authored changes (issue 3): an admin resolving a conflict writes an
-- Automerge change on the hub, which the log carries to every site holding
-- the patient like any pushed change. See README.md: append-only once
-- released.
--
-- A change has exactly one provenance: the device that pushed it (with that
-- device's site), or the hub admin who wrote it (`author_user_id`). Pull
-- compares `device_id IS DISTINCT FROM` the pulling device, so a
-- hub-authored change (no device) reaches every holding site, the pushing
-- ones included.
ALTER TABLE changes
    ALTER COLUMN site_id DROP NOT NULL,
    ALTER COLUMN device_id DROP NOT NULL,
    ADD COLUMN author_user_id uuid REFERENCES users (id),
    ADD CONSTRAINT changes_one_provenance CHECK (
        (device_id IS NOT NULL AND site_id IS NOT NULL AND author_user_id IS NULL)
        OR (device_id IS NULL AND site_id IS NULL AND author_user_id IS NOT NULL)
    );

-- Per-device counts of changes received (`GET /api/v1/sites/{id}/sync-status`).
CREATE INDEX changes_device_id ON changes (device_id) WHERE device_id IS NOT NULL;
