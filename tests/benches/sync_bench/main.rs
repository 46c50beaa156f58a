//! Sync benchmarks of issue 3: bytes on the wire and time, measured across
//! real processes (the `edge` and `hub` binaries, PostgreSQL, loopback TCP)
//! through the link simulator ([`LinkSimulator`]), which counts every byte
//! each way (HTTP headers, signatures and framing included) and can
//! throttle and cut the link.
//!
//! `cargo bench -p santerurale-e2e --bench sync_bench` (builds the bench in
//! the release profile; it then starts `target/release/edge` and `hub`, so
//! run `cargo build --release -p edge -p hub --bins` first, or point
//! `SANTERURALE_EDGE_BIN` / `SANTERURALE_HUB_BIN` at binaries).
//!
//! # Scenario
//! 1. Edge A is seeded with [`SITE_PATIENTS`] patients and
//!    [`ENCOUNTERS_EACH`] encounters each, written through the edge's own
//!    Store straight into its SQLite file ([`seed`]), enrolled in a site
//!    through a clean (byte-counting) link and synced: the hub now holds the
//!    site.
//! 2. **No-op sync**: A syncs again with nothing new.
//! 3. **Fresh edge**: edge B enrolls in the same site through its own clean
//!    link and syncs until it holds every patient. The same through a link
//!    throttled to 64 kbit/s with 700 ms round trips: by default on a
//!    scaled-down site ([`SMALL_PATIENTS`] patients, its own hub site) and
//!    extrapolated by bytes; with `SYNC_BENCH_SLOW_LINK=1` on the full site
//!    (at least as long as the site's bytes take at 64 kbit/s: about
//!    half an hour with today's encoding).
//! 4. **A month's batch**: [`MONTH`] new encounters on A (one each for
//!    distinct patients), pushed in one sync through the clean link;
//!    compared with the same changes as raw Automerge changes (outbox
//!    bytes) and with a CouchDB-style replication of them ([`couch`]).
//! 5. **Cut halfway**: [`MONTH`] more encounters, pushed through a link at
//!    32 kbit/s with 700 ms round trips that is cut when half the expected
//!    upload has gone through, healed once that sync has failed; `edge
//!    sync` is run again (as the scheduler would) until it succeeds.
//!
//! Figures are printed next to their targets; nothing about them is
//! asserted (a slow machine must not fail a build). What is checked is
//! that each scenario did what it claims: every change reached the hub
//! once, the fresh edge holds every patient. `SYNC_BENCH_PATIENTS` shrinks
//! the site for a quick run.

mod couch;
mod measure;
mod seed;
mod whatif;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use rand_chacha::ChaCha8Rng;
use santerurale_e2e::{
    Api, EdgeDir, HubDir, HubProcess, LinkProfile, LinkSimulator, create_site, edge_binary, enrollment_token,
    hub_binary,
};
use santerurale_fixtures::Generator;
use santerurale_shared::sync::PushConfig;
use time::OffsetDateTime;

use crate::measure::{LinkDelta, Measure, Run};

const SITE_PATIENTS: usize = 10_000;
const ENCOUNTERS_EACH: usize = 3;
const MONTH: usize = 3_000;
const SMALL_PATIENTS: usize = 300;
const SEED: u64 = 42;
const HUB_ADMIN: &str = "bench-admin";
const HUB_PASSWORD: &str = "a long bench password";
/// Longest any one command may take (the throttled full enrollment is the
/// longest: about 4 MB at 64 kbit/s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1_800);
/// Runs of `edge sync` after a cut before the bench gives up.
const MAX_ATTEMPTS: usize = 6;

/// Targets of issue 3.
const TARGET_BYTES_PER_ENCOUNTER: f64 = 100.0;
const TARGET_NOOP_BYTES: u64 = 1_000;
const TARGET_ENROLL_BYTES: u64 = 4_000_000;
const TARGET_ENROLL_SECS: f64 = 15.0;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench())
}

/// A running hub with a signed-in admin. Field order: the process dies
/// before its directory and database are dropped.
struct Hub {
    process: HubProcess,
    api: Api,
    _dir: HubDir,
}

impl Hub {
    async fn start() -> Result<Self> {
        let dir = HubDir::new().await?;
        dir.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(HUB_ADMIN, HUB_PASSWORD).await?;
        Ok(Self { process, api, _dir: dir })
    }

    async fn token(&self, site: &str) -> Result<String> {
        enrollment_token(&self.api, site).await
    }
}

#[expect(clippy::too_many_lines, reason = "the scenario reads top to bottom")]
async fn bench() -> Result<()> {
    let patients_n = match std::env::var("SYNC_BENCH_PATIENTS") {
        Ok(v) => v.replace('_', "").parse().context("SYNC_BENCH_PATIENTS must be a whole number")?,
        Err(_) => SITE_PATIENTS,
    };
    let slow_link = std::env::var("SYNC_BENCH_SLOW_LINK").is_ok_and(|v| v == "1");
    let month = MONTH.min(patients_n);
    println!("sync bench: site of {patients_n} patients x {ENCOUNTERS_EACH} encounters, month of {month}, seed {SEED}");
    println!("edge binary: {}", edge_binary()?.display());
    println!("hub binary:  {}", hub_binary()?.display());
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut generator = Generator::new(SEED, OffsetDateTime::now_utc().date());
    let hub = Hub::start().await?;
    let upstream = hub.process.addr();
    let site = create_site(&hub.api, "Centre de santé de Kati", "KATI").await?;

    // 1. Edge A holds the site and pushes it.
    let a = EdgeDir::new()?;
    let (mut site_patients, took) = seed::patients(&a.data_dir(), &mut generator, patients_n, ENCOUNTERS_EACH)?;
    let (initial_changes, initial_raw) = seed::outbox_after(&a.db_path(), 0)?;
    println!(
        "\nseeded edge A: {patients_n} patients, {initial_changes} changes ({} raw change bytes) in {:.1} s",
        initial_raw,
        took.as_secs_f64()
    );
    let link_a = LinkSimulator::start(upstream, LinkProfile::clean(), SEED).await?;
    let token = hub.token(&site).await?;
    let enroll_a =
        measure::run(&a, &enroll_args(&link_a.url(), &token), &link_a, &hub.process, COMMAND_TIMEOUT).await?;
    ensure!(enroll_a.ok, "edge A could not enroll:\n{}", enroll_a.output);
    let initial = sync(&a, &link_a, &hub.process).await?;
    let pushed = initial.report.map_or(0, |r| r.pushed);
    ensure!(pushed == initial_changes, "edge A pushed {pushed} of {initial_changes} changes");
    println!(
        "initial push from A: {initial_changes} changes, {} up + {} down in {} requests, {:.1} s \
         (hub serving: {:.1} s; {:.0} changes/s)",
        initial.link.up,
        initial.link.down,
        initial.requests,
        initial.elapsed.as_secs_f64(),
        initial.hub_secs,
        per_second(initial_changes, initial.elapsed)
    );

    // 2. Nothing new.
    let noop = sync(&a, &link_a, &hub.process).await?;
    println!(
        "no-op sync of A: {} requests on {} connections, {} B up, {} B down, {:.0} ms; edge says {:?}",
        noop.requests,
        noop.link.connections,
        noop.link.up,
        noop.link.down,
        noop.elapsed.as_secs_f64() * 1000.0,
        noop.report
    );

    // 3. A fresh edge in the same site.
    let fresh = fresh_edge(&hub, &site, upstream, LinkProfile::clean(), patients_n).await?;
    println!(
        "fresh edge B (clean link): enroll {:.2} s + sync {:.2} s; {} B up, {} B down in {} requests \
         ({} pages); holds {} patients",
        fresh.enroll.elapsed.as_secs_f64(),
        fresh.sync.elapsed.as_secs_f64(),
        fresh.link.up,
        fresh.link.down,
        fresh.enroll.requests + fresh.sync.requests,
        fresh.sync.report.map_or(0, |r| r.pull_pages),
        fresh.patients
    );
    // The site's log, as the fresh edge received it: A's whole outbox so far.
    let fresh_bodies = whatif::pull(&a.db_path())?;
    let slow_profile = LinkProfile::throttled(64_000, Duration::from_millis(700));
    let slow = if slow_link {
        let run = fresh_edge(&hub, &site, upstream, slow_profile, patients_n).await?;
        println!("fresh edge (64 kbit/s, 700 ms RTT, full site): {:.1} s, {} B", run.elapsed(), run.link.total());
        SlowEnroll { measured: run, scale: 1.0 }
    } else {
        let small = SMALL_PATIENTS.min(patients_n);
        println!(
            "\n(the full-site enrollment at 64 kbit/s would take at least {:.0} minutes (its bytes at that rate): \
             SYNC_BENCH_SLOW_LINK=1 runs it; this run measures a site of {small} patients through the slow link \
             and extrapolates by bytes)",
            fresh.link.total() as f64 * 8.0 / 64_000.0 / 60.0
        );
        let small_site = create_site(&hub.api, "Centre de santé de Siby", "SIBY").await?;
        let c = EdgeDir::new()?;
        seed::patients(&c.data_dir(), &mut generator, small, ENCOUNTERS_EACH)?;
        let link_c = LinkSimulator::start(upstream, LinkProfile::clean(), SEED + 2).await?;
        let token = hub.token(&small_site).await?;
        let enrolled =
            measure::run(&c, &enroll_args(&link_c.url(), &token), &link_c, &hub.process, COMMAND_TIMEOUT).await?;
        ensure!(enrolled.ok, "edge C could not enroll:\n{}", enrolled.output);
        ensure!(sync(&c, &link_c, &hub.process).await?.ok, "edge C could not push its site");
        let run = fresh_edge(&hub, &small_site, upstream, slow_profile, small).await?;
        #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let scale = fresh.link.total() as f64 / run.link.total() as f64;
        println!(
            "fresh edge (64 kbit/s, 700 ms RTT, {small} patients): {:.1} s, {} B; scaled by the clean full-site \
             bytes (x{scale:.2}): {:.0} s",
            run.elapsed(),
            run.link.total(),
            run.elapsed() * scale
        );
        SlowEnroll { measured: run, scale }
    };

    // 4. A month's batch through the clean link.
    let mut picks: Vec<usize> = (0..site_patients.len()).collect();
    picks.shuffle(&mut rng);
    picks.truncate(month);
    let month_run = push_month(&a, &link_a, &hub.process, &mut generator, &mut site_patients, &picks).await?;
    let device_a = santerurale_e2e::read_meta(&a.db_path(), "device_id")?.unwrap_or_else(|| "device".to_owned());
    let couch_patient =
        couch::traffic(couch::Shape::PatientDocument, &site_patients, &picks, &site, &device_a, &mut rng)?;
    let couch_encounter =
        couch::traffic(couch::Shape::EncounterDocument, &site_patients, &picks, &site, &device_a, &mut rng)?;

    // 5. Another month through a slow link, cut halfway.
    picks.shuffle(&mut rng);
    let cut =
        push_month_with_cut(&a, &link_a, &hub.process, &mut generator, &mut site_patients, &picks, &month_run).await?;

    let table = Table { month: month_run, couch_patient, couch_encounter, noop, fresh, fresh_bodies, slow, cut };
    table.print(month);
    Ok(())
}

fn enroll_args<'a>(hub_url: &'a str, token: &'a str) -> [&'a str; 5] {
    ["enroll", "--hub", hub_url, "--token", token]
}

/// One `edge sync` through `link`; fails if the run failed.
async fn sync(edge: &EdgeDir, link: &LinkSimulator, hub: &HubProcess) -> Result<Run> {
    let run = measure::run(edge, &["sync"], link, hub, COMMAND_TIMEOUT).await?;
    ensure!(run.ok, "edge sync failed:\n{}", run.output);
    Ok(run)
}

/// A fresh edge enrolled in `site` through its own link, synced once.
#[derive(Debug)]
struct FreshEdge {
    enroll: Run,
    sync: Run,
    link: LinkDelta,
    patients: u64,
}

impl FreshEdge {
    fn elapsed(&self) -> f64 {
        (self.enroll.elapsed + self.sync.elapsed).as_secs_f64()
    }
}

async fn fresh_edge(
    hub: &Hub,
    site: &str,
    upstream: std::net::SocketAddr,
    profile: LinkProfile,
    expected_patients: usize,
) -> Result<FreshEdge> {
    let edge = EdgeDir::new()?;
    let link = LinkSimulator::start(upstream, profile, SEED + 1).await?;
    let token = hub.token(site).await?;
    let enroll = measure::run(&edge, &enroll_args(&link.url(), &token), &link, &hub.process, COMMAND_TIMEOUT).await?;
    ensure!(enroll.ok, "the fresh edge could not enroll:\n{}", enroll.output);
    let synced = sync(&edge, &link, &hub.process).await?;
    let patients = seed::patient_count(&edge.db_path())?;
    ensure!(
        patients == u64::try_from(expected_patients)?,
        "the fresh edge holds {patients} patients after its sync, not {expected_patients}"
    );
    let mut total = enroll.link;
    total.add(synced.link);
    Ok(FreshEdge { enroll, sync: synced, link: total, patients })
}

/// The throttled enrollment: measured, and the factor to the full site.
#[derive(Debug)]
struct SlowEnroll {
    measured: FreshEdge,
    scale: f64,
}

/// A month's batch pushed through the clean link.
#[derive(Debug)]
struct MonthPush {
    run: Run,
    changes: u64,
    raw_bytes: u64,
    bodies: whatif::Bodies,
}

async fn push_month(
    a: &EdgeDir,
    link: &LinkSimulator,
    hub: &HubProcess,
    generator: &mut Generator,
    patients: &mut [seed::SeededPatient],
    picks: &[usize],
) -> Result<MonthPush> {
    let from = seed::outbox_max_seq(&a.db_path())?;
    seed::encounters(&a.data_dir(), generator, patients, picks)?;
    let (changes, raw_bytes) = seed::outbox_after(&a.db_path(), from)?;
    let run = sync(a, link, hub).await?;
    let report = run.report.context("no sync report")?;
    ensure!(
        report.pushed == changes && run.changes_applied == changes,
        "a month's push moved {} changes ({} new to the hub) of {changes}",
        report.pushed,
        run.changes_applied
    );
    let bodies = whatif::push(&a.db_path(), from)?;
    Ok(MonthPush { run, changes, raw_bytes, bodies })
}

/// The month pushed through a slow link cut halfway, then retried.
#[derive(Debug)]
struct CutPush {
    attempts: Vec<Run>,
    elapsed: Duration,
    /// How long after the start the link was cut (`None`: the first sync
    /// ended before half the upload went through).
    cut_after: Option<Duration>,
    changes: u64,
}

const CUT_LINK_BITS: u64 = 32_000;

async fn push_month_with_cut(
    a: &EdgeDir,
    link: &LinkSimulator,
    hub: &HubProcess,
    generator: &mut Generator,
    patients: &mut [seed::SeededPatient],
    picks: &[usize],
    clean: &MonthPush,
) -> Result<CutPush> {
    let from = seed::outbox_max_seq(&a.db_path())?;
    seed::encounters(&a.data_dir(), generator, patients, picks)?;
    let (changes, _) = seed::outbox_after(&a.db_path(), from)?;
    link.set_profile(LinkProfile::throttled(CUT_LINK_BITS, Duration::from_millis(700)));
    let started = Instant::now();
    let before = Measure::start(link, hub).await?;
    let mut child = a.spawn_cli(&["sync"])?;
    let half = clean.run.link.up / 2;
    let reached = measure::wait_for_upload(&mut child, link, before.link(), half).await?;
    let cut_after = reached.then(|| {
        link.cut();
        started.elapsed()
    });
    let first = measure::finish(a, &mut child, link, hub, COMMAND_TIMEOUT, before).await;
    link.heal();
    let mut attempts = vec![first?];
    while attempts.last().is_some_and(|r| !r.ok) && attempts.len() < MAX_ATTEMPTS {
        attempts.push(measure::run(a, &["sync"], link, hub, COMMAND_TIMEOUT).await?);
    }
    let elapsed = started.elapsed();
    link.set_profile(LinkProfile::clean());
    let last = attempts.last().context("no attempt")?;
    ensure!(last.ok, "the month's push did not complete in {MAX_ATTEMPTS} runs:\n{}", last.output);
    let applied: u64 = attempts.iter().map(|r| r.changes_applied).sum();
    ensure!(applied == changes, "the hub took {applied} new changes of the {changes} pushed");
    Ok(CutPush { attempts, elapsed, cut_after, changes })
}

/// Everything measured, printed against the targets.
#[derive(Debug)]
struct Table {
    month: MonthPush,
    couch_patient: couch::CouchTraffic,
    couch_encounter: couch::CouchTraffic,
    noop: Run,
    fresh: FreshEdge,
    fresh_bodies: whatif::Bodies,
    slow: SlowEnroll,
    cut: CutPush,
}

#[expect(clippy::cast_precision_loss, reason = "byte and change counts far below 2^52")]
impl Table {
    fn print(&self, month: usize) {
        let m = &self.month;
        let n = m.changes as f64;
        let ours = m.run.link.total() as f64;
        // A sync always ends with a pull; with nothing new it is the whole run.
        let push_only = m.run.link.total().saturating_sub(self.noop.link.total()) as f64;
        let raw = m.raw_bytes as f64;
        let couch_doc = self.couch_patient.bytes as f64;
        let couch_enc = self.couch_encounter.bytes as f64;

        println!("\n== 1. a month's batch: {month} encounters pushed in one sync (clean link, every byte counted) ==");
        row(
            "wire bytes per encounter (whole sync)",
            format!("{:.1} B", ours / n),
            "<= 100 B",
            Some(ours / n <= TARGET_BYTES_PER_ENCOUNTER),
        );
        row(
            "  of which the push alone",
            format!("{:.1} B", push_only / n),
            "<= 100 B",
            Some(push_only / n <= TARGET_BYTES_PER_ENCOUNTER),
        );
        row("  up / down", format!("{} / {} B", m.run.link.up, m.run.link.down), "", None);
        row("  HTTP requests / connections", format!("{} / {}", m.run.requests, m.run.link.connections), "", None);
        row("  time (loopback)", format!("{:.2} s", m.run.elapsed.as_secs_f64()), "", None);
        row("  of which the hub serving requests", format!("{:.2} s", m.run.hub_secs), "", None);
        let b = &m.bodies;
        let http = m.run.link.total().saturating_sub(b.as_sent) as f64;
        row("  push bodies (postcard + zstd, rebuilt)", format!("{} B in {}", b.as_sent, b.messages), "", None);
        row("  HTTP: headers, signatures, answers, pull", format!("{http:.0} B"), "", None);
        let what_if = http + b.if_raw as f64;
        row(
            "  what-if: raw changes inside the zstd body",
            format!("{:.1} B", what_if / n),
            "<= 100 B",
            Some(what_if / n <= TARGET_BYTES_PER_ENCOUNTER),
        );
        row("raw Automerge changes per encounter", format!("{:.1} B", raw / n), "", None);
        row("  (uncompressed, Change::raw_bytes())", format!("{:.1} B", b.raw_change_bytes as f64 / n), "", None);
        row("CouchDB patient document per encounter", format!("{:.1} B", couch_doc / n), "", None);
        row("CouchDB encounter document (CHT-style)", format!("{:.1} B", couch_enc / n), "", None);
        row("ratio ours / raw changes", format!("{:.3}", ours / raw), "", None);
        row("ratio ours / CouchDB patient doc", format!("{:.3}", ours / couch_doc), "", None);
        row("ratio ours / CouchDB encounter doc", format!("{:.3}", ours / couch_enc), "", None);
        println!(
            "  CouchDB model: per batch of {} documents, POST _revs_diff + POST _bulk_docs (new_edits=false, each doc \
             with _id, _rev, _revisions) + PUT _local checkpoint, with typical HTTP/1.1 headers, plain JSON; patient \
             doc = demographics + every encounter (same keys as our Automerge doc), {} requests, {} B of _bulk_docs \
             bodies ({} B if zstd-3 compressed); encounter doc = one new doc per encounter, {} B of bodies ({} B zstd)",
            couch::BATCH_SIZE,
            self.couch_patient.requests,
            self.couch_patient.bulk_docs_body,
            self.couch_patient.bulk_docs_body_zstd,
            self.couch_encounter.bulk_docs_body,
            self.couch_encounter.bulk_docs_body_zstd
        );

        let noop = &self.noop;
        println!("\n== 2. sync with nothing new, site of {} patients ==", self.fresh.patients);
        row("HTTP requests (round trips)", noop.requests.to_string(), "1", Some(noop.requests == 1));
        row("TCP connections", noop.link.connections.to_string(), "", None);
        row("bytes up / down", format!("{} / {} B", noop.link.up, noop.link.down), "", None);
        row(
            "bytes total",
            format!("{} B", noop.link.total()),
            "<= 1000 B",
            Some(noop.link.total() <= TARGET_NOOP_BYTES),
        );
        row("time (loopback, whole `edge sync`)", format!("{:.0} ms", noop.elapsed.as_secs_f64() * 1000.0), "", None);

        let f = &self.fresh;
        println!("\n== 3. fresh edge enrolling into the site ({} patients) ==", f.patients);
        row(
            "bytes on the wire (enroll + sync)",
            format!("{} B", f.link.total()),
            "<= 4 MB",
            Some(f.link.total() <= TARGET_ENROLL_BYTES),
        );
        row("  up / down", format!("{} / {} B", f.link.up, f.link.down), "", None);
        row("  HTTP requests", (f.enroll.requests + f.sync.requests).to_string(), "", None);
        let fb = &self.fresh_bodies;
        row("  pull bodies (rebuilt) / changes in them", format!("{} / {} B", fb.as_sent, fb.change_bytes), "", None);
        let what_if = f.link.total().saturating_sub(fb.as_sent) + fb.if_raw;
        row(
            "  what-if: raw changes inside the zstd body",
            format!("{what_if} B"),
            "<= 4 MB",
            Some(what_if <= TARGET_ENROLL_BYTES),
        );
        row(
            "time until up to date (loopback)",
            format!("{:.1} s", f.elapsed()),
            "<= 15 s",
            Some(f.elapsed() <= TARGET_ENROLL_SECS),
        );
        row(
            "  enroll / sync",
            format!("{:.2} / {:.2} s", f.enroll.elapsed.as_secs_f64(), f.sync.elapsed.as_secs_f64()),
            "",
            None,
        );
        row("  of which the hub serving requests", format!("{:.2} s", f.enroll.hub_secs + f.sync.hub_secs), "", None);
        let s = &self.slow;
        let (what, shown) = if (s.scale - 1.0).abs() < f64::EPSILON {
            ("time at 64 kbit/s, 700 ms RTT (full site)", format!("{:.0} s", s.measured.elapsed()))
        } else {
            ("time at 64 kbit/s, 700 ms RTT (extrapolated)", format!("~{:.0} s", s.measured.elapsed() * s.scale))
        };
        row(what, shown, "", None);
        if (s.scale - 1.0).abs() >= f64::EPSILON {
            row(
                &format!("  measured on {} patients", s.measured.patients),
                format!("{:.1} s, {} B", s.measured.elapsed(), s.measured.link.total()),
                "",
                None,
            );
        }
        row(
            "  bandwidth floor for the full site",
            format!("{:.0} s", f.link.total() as f64 * 8.0 / 64_000.0),
            "",
            None,
        );

        let c = &self.cut;
        println!("\n== 4. a month's upload at {} kbit/s, 700 ms RTT, link cut halfway ==", CUT_LINK_BITS / 1000);
        row("completed", format!("yes, {} changes", c.changes), "yes", Some(true));
        row("edge sync runs", c.attempts.len().to_string(), "", None);
        row(
            "link cut after",
            c.cut_after.map_or_else(|| "not cut (ended first)".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            "",
            None,
        );
        row("total time (cut included)", format!("{:.1} s", c.elapsed.as_secs_f64()), "", None);
        let duplicates: u64 = c.attempts.iter().filter_map(|r| r.report).map(|r| r.duplicates).sum();
        // The planner's first batch is its ceiling: the most one cut can make it send twice.
        let largest_batch = c.changes.min(u64::from(PushConfig::default().ceiling.max_changes)) as f64;
        row(
            "duplicates the hub reported",
            duplicates.to_string(),
            &format!("<= 1 batch (~{largest_batch:.0})"),
            Some(duplicates as f64 <= largest_batch),
        );
        let mut link = LinkDelta::default();
        for r in &c.attempts {
            link.add(r.link);
        }
        row("bytes up / down, all runs", format!("{} / {} B", link.up, link.down), "", None);
        row(
            "  sent again because of the cut",
            format!("{} B", link.total().saturating_sub(self.month.run.link.total())),
            "",
            None,
        );
        for (i, r) in c.attempts.iter().enumerate() {
            println!(
                "  run {}: {} in {:.1} s, {} B up, {} B down, {} requests, {} link faults; edge says {:?}",
                i + 1,
                if r.ok { "ok" } else { "failed" },
                r.elapsed.as_secs_f64(),
                r.link.up,
                r.link.down,
                r.requests,
                r.link.faults,
                r.report
            );
        }
        println!(
            "\n(bytes are counted by the link simulator at the TCP payload level: HTTP headers and bodies, no TCP/IP headers)"
        );
    }
}

fn row(name: &str, value: String, target: &str, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "meets",
        Some(false) => "MISSES",
        None => "",
    };
    println!("{name:<46} {value:>22}   {target:<18} {verdict}");
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn per_second(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}
