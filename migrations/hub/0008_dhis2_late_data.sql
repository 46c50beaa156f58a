-- DHIS2 late data (issue 4): an export job created because values of an
-- exported period changed after it was sent (an encounter that synced late,
-- a corrected birth date or sex) carries the trigger 'late_data' and
-- `rerun_of` = the export whose values DHIS2 holds. See README.md:
-- append-only once released.
ALTER TABLE dhis2_export_jobs DROP CONSTRAINT dhis2_export_jobs_trigger_check;
ALTER TABLE dhis2_export_jobs ADD CONSTRAINT dhis2_export_jobs_trigger_check
    CHECK (trigger IN ('api', 'ui', 'cli', 'schedule', 'rerun', 'late_data'));
