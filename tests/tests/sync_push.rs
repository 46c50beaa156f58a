//! Edge-to-hub push across real processes: the `edge` and `hub` binaries on
//! loopback, the hub on a fresh PostgreSQL database, the edge on its SQLite
//! file. Three scenarios, each with its own hub and database:
//!
//! 1. **Happy path** ([`push_delivers_the_outbox_exactly`]): patients and
//!    encounters recorded through the edge's API *before* enrollment, then
//!    `edge enroll` and `edge sync` (CLI): the hub's change log holds exactly
//!    the edge's outbox (same count, same set of change hashes, each with its
//!    patient, the edge's site and device), every outbox row is acknowledged,
//!    and a second `edge sync` sends nothing new.
//! 2. **Exactly once under crashes** ([`push_is_exactly_once_across_kills`]):
//!    with hundreds of pending changes and a hub whose body limit forces many
//!    small batches, `edge sync` is SIGKILLed at seeded random moments over
//!    several rounds (more writes between rounds). After every kill the
//!    invariant of the protocol holds: an outbox row marked as sent is on
//!    the hub, and the hub holds nothing the edge did not send, each change
//!    once. (A round may also fail on its own, retryably: see
//!    [`SMALL_BODY_LIMIT`].) Then the *hub* is SIGKILLed while a sync is
//!    pushing (after it applied part of it): that sync exits non-zero saying
//!    it is retryable, and so does one while the hub is down; the hub
//!    restarts on the same database and address and the next sync
//!    completes. The end state is the same as in 1: count == distinct
//!    hashes == outbox rows, all marked as sent, and one more sync sends
//!    nothing.
//! 3. **Security** ([`enrollment_is_single_use_and_revocation_stops_push`]):
//!    a second edge enrolling with a spent token fails with a clear message
//!    and keeps no key; after an admin revokes the first edge's device, its
//!    `edge sync` fails, its `GET /api/v1/sync/status` names the revocation,
//!    and the hub stores nothing more from it.
//!
//! The hub's state is read from its `changes` table directly (and its
//! `/metrics`). Nothing sleeps to synchronise: servers are polled for
//! readiness, and the kill points are random delays or polled hub counters.
//! The seed is printed; `SANTERURALE_SYNC_SEED=N` replays the same choices
//! (the kill moments still depend on timing),
//! `SANTERURALE_SYNC_KILL_ROUNDS` changes the number of edge kills (default 8).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::{Method, StatusCode};
use santerurale_e2e::{
    Api, CliChild, EdgeDir, EdgeProcess, HubChange, HubDir, HubProcess, OutboxRow, POLL_INTERVAL, create_site,
    enrollment_token, metric_value, poll_until, read_outbox, tail,
};
use serde_json::{Value, json};

const HUB_ADMIN: &str = "hub-admin";
const HUB_PASSWORD: &str = "a long hub password";
const EDGE_USER: &str = "sync-admin";
const EDGE_PASSWORD: &str = "a long edge password";
const DEFAULT_KILL_ROUNDS: u64 = 8;
/// Forces the crash scenario's pushes into many small requests, so kills
/// land between acknowledged batches, not only before the first. The edge
/// finds the size by being refused with 413; over a real socket the hub may
/// close the connection before the edge has written its body, and the edge
/// then sees a broken pipe, not the 413, and fails (retryably) instead of
/// splitting. So a crash round may fail on its own, and the final sync runs
/// against the default limit.
const SMALL_BODY_LIMIT: &str = "12288";
/// Longest random delay before the first edge kill; then the length of the
/// last sync that finished.
const INITIAL_MAX_KILL_DELAY_MS: u64 = 150;
/// How long a sync may take in these scenarios (hundreds of changes on loopback).
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// The phrase `edge sync` prints for a retryable failure.
const RETRYABLE: &str = "will succeed once the hub is reachable again";

const GIVEN: [&str; 6] = ["Aminata", "Moussa", "Fatoumata", "Bakary", "Oumou", "Seydou"];
const FAMILY: [&str; 6] = ["Traoré", "Diarra", "Coulibaly", "Keïta", "Sangaré", "Konaté"];

/// A running hub with a signed-in admin client. Field order: the process
/// dies before the directory and its database are dropped.
struct Hub {
    process: Option<HubProcess>,
    api: Api,
    dir: HubDir,
}

impl Hub {
    async fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut dir = HubDir::new().await?;
        for (key, value) in env {
            dir = dir.with_env(key, value);
        }
        dir.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(HUB_ADMIN, HUB_PASSWORD).await?;
        Ok(Self { process: Some(process), api, dir })
    }

    fn process(&self) -> anyhow::Result<&HubProcess> {
        self.process.as_ref().context("the hub is not running")
    }

    fn url(&self) -> anyhow::Result<String> {
        Ok(self.process()?.base_url().to_owned())
    }

    /// A site and a one-time enrollment token for it.
    async fn site_with_token(&self, name: &str, code: &str) -> anyhow::Result<(String, String)> {
        let site = create_site(&self.api, name, code).await?;
        let token = enrollment_token(&self.api, &site).await?;
        Ok((site, token))
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.process()?.api()?.text("/metrics").await?)
    }

    /// The whole change log (works with the hub dead).
    async fn changes(&self) -> anyhow::Result<Vec<HubChange>> {
        self.dir.change_log().await
    }

    fn log_tail(&self) -> String {
        tail(&self.dir.log(), 30)
    }
}

/// An edge with a running server and a signed-in client.
struct Edge {
    /// Kept alive for `api`; killed when the scenario ends.
    _process: EdgeProcess,
    api: Api,
    dir: EdgeDir,
}

impl Edge {
    async fn start() -> anyhow::Result<Self> {
        let dir = EdgeDir::new()?;
        dir.add_user(EDGE_USER, "admin", EDGE_PASSWORD).await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(EDGE_USER, EDGE_PASSWORD).await?;
        Ok(Self { _process: process, api, dir })
    }

    async fn enroll(&self, hub_url: &str, token: &str) -> anyhow::Result<String> {
        self.dir.cli(&enroll_args(hub_url, token).iter().map(String::as_str).collect::<Vec<_>>(), "").await
    }

    async fn status(&self) -> anyhow::Result<Value> {
        Ok(self.api.call(Method::GET, "/api/v1/sync/status", None, StatusCode::OK).await?)
    }

    /// Registers `patients` patients with `encounters` encounters each
    /// through the API: `patients * (1 + encounters)` outbox changes.
    async fn record(&self, rng: &mut StdRng, patients: usize, encounters: usize) -> anyhow::Result<u64> {
        let mut writes = 0;
        for _ in 0..patients {
            let draft = json!({
                "given_name": GIVEN[rng.random_range(0..GIVEN.len())],
                "family_name": FAMILY[rng.random_range(0..FAMILY.len())],
                "sex": if rng.random_bool(0.5) { "female" } else { "male" },
                "age_years": rng.random_range(0..90u32),
                "village": "Kati",
                "phone": format!("7{:07}", rng.random_range(0..10_000_000u32)),
            });
            let patient = self.api.register_patient(&draft, true).await?;
            let id = patient["id"].as_str().context("patient without an id")?.to_owned();
            writes += 1;
            for n in 0..encounters {
                let draft = json!({
                    "kind": "consultation",
                    "complaint": "fièvre",
                    "diagnosis": format!("paludisme simple {n}"),
                    "icd10": "B54",
                    "temperature_c": 38.5,
                });
                self.api.add_encounter(&id, &draft).await?;
                writes += 1;
            }
        }
        Ok(writes)
    }
}

/// `enroll --hub URL --token T`, as documented. Tokens are base64url, so one
/// in 64 starts with `-`: the edge's `--token` accepts that as a value.
fn enroll_args(hub_url: &str, token: &str) -> [String; 5] {
    ["enroll".into(), "--hub".into(), hub_url.into(), "--token".into(), token.into()]
}

/// What must hold at any moment, even right after a kill: the hub stores
/// each change once, only changes this edge sent, with their patient, site
/// and device; and every outbox row marked as sent is on the hub.
fn check_consistent(
    outbox: &BTreeMap<String, OutboxRow>,
    hub: &[HubChange],
    site_id: &str,
    device_id: &str,
) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for change in hub {
        ensure!(seen.insert(change.hash.as_str()), "the hub holds change {} more than once", change.hash);
        let row =
            outbox.get(&change.hash).with_context(|| format!("the hub holds {}, not in the outbox", change.hash))?;
        ensure!(
            row.patient_id == change.patient_id,
            "change {} is for patient {} on the edge, {} on the hub",
            change.hash,
            row.patient_id,
            change.patient_id
        );
        ensure!(change.site_id == site_id, "change {} has site {}, not {site_id}", change.hash, change.site_id);
        ensure!(
            change.device_id == device_id,
            "change {} has device {}, not {device_id}",
            change.hash,
            change.device_id
        );
    }
    for (hash, row) in outbox {
        ensure!(
            !row.acked || seen.contains(hash.as_str()),
            "outbox change {hash} is marked as sent but not on the hub"
        );
    }
    Ok(())
}

/// The end state of a complete sync: the hub's log is exactly the outbox,
/// all of it acknowledged.
fn check_delivered(
    outbox: &BTreeMap<String, OutboxRow>,
    hub: &[HubChange],
    site_id: &str,
    device_id: &str,
) -> anyhow::Result<()> {
    check_consistent(outbox, hub, site_id, device_id)?;
    let distinct: BTreeSet<&str> = hub.iter().map(|c| c.hash.as_str()).collect();
    ensure!(
        hub.len() == outbox.len() && distinct.len() == outbox.len(),
        "the hub holds {} changes ({} distinct), the edge outbox {}",
        hub.len(),
        distinct.len(),
        outbox.len()
    );
    ensure!(
        distinct.iter().copied().eq(outbox.keys().map(String::as_str)),
        "the hub's hashes differ from the outbox's"
    );
    let pending = outbox.values().filter(|r| !r.acked).count();
    ensure!(pending == 0, "{pending} outbox rows are not marked as sent after a complete sync");
    Ok(())
}

/// `N` from `pushed N changes in ...`, what a successful `edge sync` prints.
fn pushed_count(stdout: &str) -> anyhow::Result<u64> {
    let n = stdout
        .split_once("pushed ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .with_context(|| format!("edge sync said {stdout:?}"))?;
    Ok(n.parse()?)
}

fn seed() -> anyhow::Result<u64> {
    match std::env::var("SANTERURALE_SYNC_SEED") {
        Ok(v) => v.parse().with_context(|| format!("SANTERURALE_SYNC_SEED={v} is not a number")),
        Err(_) => Ok(u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_delivers_the_outbox_exactly() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed()?);
    let hub = Hub::start(&[]).await?;
    let (site_id, token) = hub.site_with_token("CSCom de Kati", "KATI").await?;
    let edge = Edge::start().await?;

    // Offline work first: the outbox fills before the edge knows any hub.
    let writes = edge.record(&mut rng, 6, 2).await?;
    let not_enrolled = edge.dir.run(&["sync"], "").await?;
    ensure!(
        !not_enrolled.status.success() && not_enrolled.text().contains("not enrolled"),
        "edge sync before enrollment: {not_enrolled:?}"
    );

    let said = edge.enroll(&hub.url()?, &token).await?;
    ensure!(said.contains(&site_id), "edge enroll said: {said}");
    let device_id = edge.status().await?["device_id"].as_str().context("no device_id in sync status")?.to_owned();

    let sync_started = Instant::now();
    let said = edge.dir.cli(&["sync"], "").await?;
    let sync_ms = sync_started.elapsed().as_millis();
    ensure!(pushed_count(&said)? == writes, "edge sync said {said:?} for {writes} writes");

    let outbox = read_outbox(&edge.dir.db_path())?;
    ensure!(u64::try_from(outbox.len())? == writes, "{writes} writes made {} outbox rows", outbox.len());
    let changes = hub.changes().await?;
    check_delivered(&outbox, &changes, &site_id, &device_id)?;
    let metrics = hub.metrics().await?;
    ensure!(
        metric_value(&metrics, "sync_changes_applied_total", "") == writes as f64,
        "sync_changes_applied_total is not {writes}:\n{metrics}"
    );
    let status = edge.status().await?;
    ensure!(
        status["outbox_depth"] == 0 && status["last_success_at"].is_string() && status["last_error"].is_null(),
        "edge sync status after the push: {status}"
    );

    // Nothing new: nothing sent, nothing stored.
    let said = edge.dir.cli(&["sync"], "").await?;
    ensure!(pushed_count(&said)? == 0, "the second edge sync said {said:?}");
    ensure!(hub.changes().await?.len() == changes.len(), "the second sync changed the hub's log");
    ensure!(
        metric_value(&hub.metrics().await?, "sync_changes_applied_total", "") == writes as f64,
        "the second sync applied changes"
    );
    println!(
        "sync happy path: {writes} changes recorded offline, enrolled, pushed in {sync_ms} ms (CLI, process start \
         included); hub log == outbox ({} hashes, site and device right); second sync sent nothing; {:.1} s in all",
        changes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// When a crash round SIGKILLs its `edge sync`.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// This long after it was spawned.
    AfterDelay(Duration),
    /// As soon as the hub's `sync_changes_applied_total` grew: a batch of
    /// this sync is committed on the hub, maybe not yet marked on the edge.
    AfterHubApplied,
}

impl std::fmt::Display for KillPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AfterDelay(d) => write!(f, "at {} ms", d.as_millis()),
            Self::AfterHubApplied => write!(f, "after a hub commit"),
        }
    }
}

/// The hub's `sync_changes_applied_total`.
async fn applied(hub: &Api) -> anyhow::Result<f64> {
    Ok(metric_value(&hub.text("/metrics").await?, "sync_changes_applied_total", ""))
}

/// Polls until the hub has applied more than `before` changes (true) or
/// `sync` has ended (false).
async fn until_hub_applies(hub: &Api, sync: &mut CliChild, before: f64) -> anyhow::Result<bool> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        if sync.try_status()?.is_some() {
            return Ok(false);
        }
        if applied(hub).await? > before {
            return Ok(true);
        }
        ensure!(
            Instant::now() < deadline,
            "{} neither ended nor reached the hub within {SYNC_TIMEOUT:?}",
            sync.shown()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_exactly_once_across_kills() -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = seed()?;
    let rounds = match std::env::var("SANTERURALE_SYNC_KILL_ROUNDS") {
        Ok(v) => v.parse().with_context(|| format!("SANTERURALE_SYNC_KILL_ROUNDS={v} is not a number"))?,
        Err(_) => DEFAULT_KILL_ROUNDS,
    };
    println!(
        "sync crash test: {rounds} edge kills and one hub kill, seed {seed} (SANTERURALE_SYNC_SEED={seed} to replay)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hub = Hub::start(&[("HUB_SYNC_MAX_BODY_BYTES", SMALL_BODY_LIMIT)]).await?;
    let (site_id, token) = hub.site_with_token("CSCom de Siby", "SIBY").await?;
    let edge = Edge::start().await?;

    let record_started = Instant::now();
    let mut writes = edge.record(&mut rng, 80, 3).await?;
    println!("recorded {writes} changes in {} ms", record_started.elapsed().as_millis());
    edge.enroll(&hub.url()?, &token).await?;
    let device_id = edge.status().await?["device_id"].as_str().context("no device_id in sync status")?.to_owned();

    let (mut killed, mut finished, mut failed) = (0, 0, 0);
    // Delays are drawn below the last observed length of a whole sync, so
    // they fall inside the push whatever this machine's speed.
    let mut max_delay = Duration::from_millis(INITIAL_MAX_KILL_DELAY_MS);
    for round in 1..=rounds {
        if round > 1 {
            let patients = rng.random_range(20..40);
            writes += edge.record(&mut rng, patients, 2).await?;
        }
        let kill_point = if rng.random_bool(0.5) {
            KillPoint::AfterDelay(Duration::from_millis(rng.random_range(0..=max_delay.as_millis() as u64)))
        } else {
            KillPoint::AfterHubApplied
        };
        let hub_api = hub.process()?.api()?;
        let applied_before = applied(&hub_api).await?;
        let spawned = Instant::now();
        let mut sync = edge.dir.spawn_cli(&["sync"])?;
        // A random kill point, not a synchronisation: the checks below hold wherever it lands.
        let still_running = match kill_point {
            KillPoint::AfterDelay(delay) => sync.wait_for(delay).await?.is_none(),
            KillPoint::AfterHubApplied => until_hub_applies(&hub_api, &mut sync, applied_before).await?,
        };
        let status = if still_running { sync.kill().await? } else { sync.wait().await? };
        let end = if status.signal() == Some(9) {
            killed += 1;
            format!("killed {kill_point}")
        } else if status.success() {
            max_delay = spawned.elapsed();
            finished += 1;
            format!("finished before {kill_point}")
        } else {
            // Allowed, not wanted: see SMALL_BODY_LIMIT.
            let said = sync.output();
            ensure!(said.contains(RETRYABLE), "round {round}: {} failed ({status}):\n{said}", sync.shown());
            failed += 1;
            format!("failed retryably before {kill_point}")
        };
        let outbox = read_outbox(&edge.dir.db_path())?;
        let changes = hub.changes().await?;
        check_consistent(&outbox, &changes, &site_id, &device_id)
            .with_context(|| format!("after round {round}: {end}"))?;
        let acked = outbox.values().filter(|r| r.acked).count();
        println!(
            "round {round}: {end:<36} ({:4} ms); outbox {:3} rows, {acked:3} marked sent; hub {:3} changes",
            spawned.elapsed().as_millis(),
            outbox.len(),
            changes.len()
        );
    }

    // The hub dies while a sync is pushing: once it has applied part of a
    // large push, SIGKILL it. A push that ends before the hub is seen
    // applying it (a fast machine, or batches grown large since the edge
    // learnt the hub's limit) is followed by one twice as long.
    let hub_url = hub.url()?;
    let mut hub_killed_after = None;
    for attempt in 1..=5 {
        writes += edge.record(&mut rng, 40 << (attempt - 1), 3).await?;
        let before = hub.changes().await?.len();
        let hub_api = hub.process()?.api()?;
        let applied_before = applied(&hub_api).await?;
        let mut sync = edge.dir.spawn_cli(&["sync"])?;
        if !until_hub_applies(&hub_api, &mut sync, applied_before).await? {
            let status = sync.wait().await?;
            let said = sync.output();
            ensure!(status.success() || said.contains(RETRYABLE), "{} failed ({status}):\n{said}", sync.shown());
            println!(
                "hub kill attempt {attempt}: the sync ended ({status}) before the hub could be killed mid-push; again"
            );
            continue;
        }
        let mut process = hub.process.take().context("the hub is not running")?;
        let status = process.kill()?;
        ensure!(status.signal() == Some(9), "the hub ended with {status}, not by SIGKILL");
        let status = sync.wait().await?;
        let said = sync.output();
        if status.success() {
            // Its last answer arrived before the kill: not mid-push after all.
            println!("hub kill attempt {attempt}: the sync had its last answer before the kill; again");
            hub.process = Some(restart_hub_on(&hub, &hub_url).await?);
            continue;
        }
        ensure!(said.contains(RETRYABLE), "edge sync against a killed hub does not say it is retryable:\n{said}");
        let outbox = read_outbox(&edge.dir.db_path())?;
        let changes = hub.changes().await?;
        check_consistent(&outbox, &changes, &site_id, &device_id).context("after the hub's kill")?;
        let status = edge.status().await?;
        ensure!(status["last_error"].is_string(), "edge sync status after the hub's kill: {status}");
        hub_killed_after = Some((changes.len() - before, outbox.values().filter(|r| !r.acked).count()));
        break;
    }
    let (stored_before_kill, pending_at_kill) =
        hub_killed_after.context("five syncs finished before the hub could be killed mid-push")?;
    println!(
        "hub killed mid-push: {stored_before_kill} changes of that push stored, {pending_at_kill} still pending; \
         edge sync exited non-zero, retryable"
    );

    // While the hub is down, a sync fails the same way (connection refused).
    let down = edge.dir.run(&["sync"], "").await?;
    ensure!(!down.status.success() && down.text().contains(RETRYABLE), "edge sync with the hub down: {down:?}");

    // Same database and data directory, and the same address (the edge
    // keeps the URL it enrolled with). Back to the default body limit, so
    // the final sync needs no 413 (see SMALL_BODY_LIMIT).
    hub.dir.unset_env("HUB_SYNC_MAX_BODY_BYTES");
    let restarted = restart_hub_on(&hub, &hub_url).await?;
    hub.process = Some(restarted);

    let final_started = Instant::now();
    let said =
        edge.dir.cli(&["sync"], "").await.with_context(|| format!("final sync; hub log:\n{}", hub.log_tail()))?;
    let final_ms = final_started.elapsed().as_millis();
    let outbox = read_outbox(&edge.dir.db_path())?;
    ensure!(u64::try_from(outbox.len())? == writes, "{writes} writes made {} outbox rows", outbox.len());
    let changes = hub.changes().await?;
    check_delivered(&outbox, &changes, &site_id, &device_id)?;
    let said_again = edge.dir.cli(&["sync"], "").await?;
    ensure!(pushed_count(&said_again)? == 0, "a sync after the final one said {said_again:?}");
    ensure!(hub.changes().await?.len() == changes.len(), "a sync after the final one changed the hub's log");
    println!(
        "sync crash test passed: {writes} changes; {killed} syncs killed, {finished} finished and {failed} failed \
         (retryably) before their kill point; hub killed once mid-push and restarted; final sync ({final_ms} ms) said {:?}; hub log == outbox, \
         each change once; {:.1} s in all",
        said.trim(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts the hub again on `url`'s port (its old one), retrying while the
/// kernel still holds it.
async fn restart_hub_on(hub: &Hub, url: &str) -> anyhow::Result<HubProcess> {
    let addr = url.trim_start_matches("http://").to_owned();
    let restarted = poll_until("the hub to restart on its old port", Duration::from_secs(30), || {
        let addr = addr.clone();
        async move {
            match hub.dir.start_on(&addr).await {
                Ok(process) => Ok(Some(process)),
                Err(e) if format!("{e:#}").contains("cannot listen on") => Ok(None),
                Err(e) => Err(e),
            }
        }
    })
    .await?;
    ensure!(restarted.base_url() == url, "the hub restarted on {}, not {url}", restarted.base_url());
    Ok(restarted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_is_single_use_and_revocation_stops_push() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed()?);
    let hub = Hub::start(&[]).await?;
    let (site_id, token) = hub.site_with_token("CSCom de Kangaba", "KANGABA").await?;
    let edge = Edge::start().await?;
    edge.enroll(&hub.url()?, &token).await?;

    // A second box with the same token: refused, and it keeps no key.
    let second = EdgeDir::new()?;
    let args = enroll_args(&hub.url()?, &token);
    let reused = second.run(&args.iter().map(String::as_str).collect::<Vec<_>>(), "").await?;
    ensure!(!reused.status.success(), "a second enrollment with a spent token succeeded: {reused:?}");
    ensure!(
        reused.text().contains("already used") && reused.text().contains("enrollment_token_used"),
        "the reused-token failure does not say why: {}",
        reused.text()
    );
    ensure!(!second.data_dir().join("device.key").exists(), "a failed enrollment left a device key behind");

    let writes = edge.record(&mut rng, 2, 1).await?;
    edge.dir.cli(&["sync"], "").await?;
    let device_id = edge.status().await?["device_id"].as_str().context("no device_id in sync status")?.to_owned();
    let delivered = hub.changes().await?;
    check_delivered(&read_outbox(&edge.dir.db_path())?, &delivered, &site_id, &device_id)?;

    let path = format!("/api/v1/devices/{device_id}/revoke");
    let revoked = hub.api.call(Method::POST, &path, None, StatusCode::OK).await?;
    ensure!(revoked["revoked_at"].is_string(), "revoke answered {revoked}");

    edge.record(&mut rng, 1, 1).await?;
    let refused = edge.dir.run(&["sync"], "").await?;
    ensure!(!refused.status.success(), "edge sync of a revoked device succeeded: {refused:?}");
    ensure!(refused.text().contains("revoked"), "edge sync of a revoked device does not say so: {}", refused.text());
    let status = edge.status().await?;
    let last_error = status["last_error"].as_str().unwrap_or_default();
    ensure!(last_error.contains("revoked_device"), "the edge's sync status does not name the revocation: {status}");
    ensure!(status["outbox_depth"] == 2, "the refused changes should stay pending: {status}");
    ensure!(hub.changes().await?.len() == delivered.len(), "the hub stored changes from a revoked device");
    let metrics = hub.metrics().await?;
    ensure!(
        metric_value(&metrics, "sync_push_requests_total", "result=\"revoked_device\"") >= 1.0,
        "no revoked_device push counted in the hub's metrics:\n{metrics}"
    );
    println!(
        "sync security: reused token refused ({}), {writes} changes pushed before revocation, then refused with \
         last_error {last_error:?}; {:.1} s",
        tail(reused.text().trim(), 1),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
