//! Where DHIS2 reporting stands, period by period, against a fake DHIS2
//! (real HTTP on loopback, real PostgreSQL): a scheduled export that fell
//! while no hub was running is caught up once, and each period is summed up
//! by each site's latest real export.

use hub::jobs::dhis2_export::{self, JobStatus, ListFilter, Trigger};
use santerurale_fixtures::dhis2::Failure;

use crate::dhis2_jobs::{Setup, add_site, export, real_sends, run_to_end};

#[tokio::test]
async fn a_scheduled_export_missed_while_no_hub_ran_is_caught_up_once() {
    let s = Setup::with(|c| c.schedule = "0 0 2 2 * *".into()).await;
    let due = hub::jobs::first_run_after(&s.config.dhis2.schedule, s.period).expect("a run after the period");
    let catch_up = |now| hub::jobs::catch_up_schedule(&s.pool, &s.config, now);
    // A new hub does not report a month it was not running in.
    assert!(catch_up(due + time::Duration::hours(1)).await.expect("catch up").is_empty());

    // This database has been reporting: the month before was scheduled.
    let db = s.pool.get().await.expect("conn");
    db.execute("INSERT INTO dhis2_schedule_runs (period) VALUES ($1)", &[&s.period.previous().to_string()])
        .await
        .expect("earlier run");
    assert!(catch_up(due - time::Duration::seconds(1)).await.expect("catch up").is_empty(), "not due yet");
    let jobs = catch_up(due).await.expect("catch up");
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].period.clone(), jobs[0].trigger), (s.period.to_string(), Trigger::Schedule));
    // Later (the daily check, another hub starting): once only.
    assert!(catch_up(due + time::Duration::days(1)).await.expect("catch up").is_empty());
    assert!(hub::jobs::run_schedule_once(&s.pool, &s.config, due.date()).await.expect("schedule").is_empty());
    assert_eq!(run_to_end(&s.ctx(), jobs[0].id).await.status, JobStatus::Succeeded);
    assert_eq!(real_sends(&s.fake), 1);
}

#[tokio::test]
async fn each_periods_reporting_is_summed_up_by_each_sites_latest_real_export() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    let siby = add_site(&s.pool, "SIBY", Some("ouSiby00001")).await;
    let neuf = add_site(&s.pool, "NEUF", Some("ouNeuf00001")).await;
    s.fake.add_org_unit("OU_NEUF", "ouNeuf00001", true);
    add_site(&s.pool, "BARE", None).await;
    let older = s.period.previous();
    let first = export(&s.pool, &s.config, older, s.kati, false).await;
    run_to_end(&ctx, first.id).await;
    // Last month: KATI succeeded (after a dry run), SIBY failed, NEUF
    // waits, BARE has nothing.
    for dry_run in [true, false] {
        let job = export(&s.pool, &s.config, s.period, s.kati, dry_run).await;
        assert_eq!(run_to_end(&ctx, job.id).await.status, JobStatus::Succeeded);
    }
    s.fake.fail_next(1, Failure::Status(400));
    let failed = export(&s.pool, &s.config, s.period, siby, false).await;
    assert_eq!(run_to_end(&ctx, failed.id).await.status, JobStatus::Failed);
    export(&s.pool, &s.config, s.period, neuf, false).await;

    let sums = dhis2_export::period_summaries(&s.pool, 12).await.expect("summaries");
    let brief: Vec<_> = sums
        .iter()
        .map(|p| {
            let counts = [p.succeeded, p.succeeded_with_conflicts, p.failed, p.in_progress, p.not_exported];
            (p.period.clone(), p.sites, counts)
        })
        .collect();
    assert_eq!(brief, [(s.period.to_string(), 4, [1, 0, 1, 1, 1]), (older.to_string(), 4, [1, 0, 0, 0, 3])]);
    assert_eq!(sums[0].not_exported_sites, ["BARE"]);
    assert_eq!(sums[1].not_exported_sites, ["BARE", "NEUF", "SIBY"]);

    // The list, filtered by period and status.
    let filter = |status| ListFilter { period: Some(s.period.to_string()), status };
    let listed = dhis2_export::list_filtered(&s.pool, 100, &filter(Some(JobStatus::Failed))).await.expect("list");
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), [failed.id]);
    assert_eq!(dhis2_export::list_filtered(&s.pool, 100, &filter(None)).await.expect("list").len(), 4);
    assert_eq!(dhis2_export::list(&s.pool, 100).await.expect("list").len(), 5);

    // SIBY re-run succeeds: its latest export now counts.
    let rerun = dhis2_export::rerun(&s.pool, &s.config, failed.id, None, Trigger::Rerun).await.expect("rerun");
    let neuf_job = dhis2_export::list_filtered(&s.pool, 1, &filter(Some(JobStatus::Pending))).await.expect("list");
    run_to_end(&ctx, neuf_job[0].id).await;
    run_to_end(&ctx, rerun.id).await;
    let sums = dhis2_export::period_summaries(&s.pool, 1).await.expect("summaries");
    assert_eq!((sums.len(), sums[0].succeeded, sums[0].failed, sums[0].in_progress), (1, 3, 0, 0));
}
