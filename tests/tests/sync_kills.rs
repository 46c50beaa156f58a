//! Crashes in the middle of sync, repeatedly, across real processes.
//!
//! 1. **An edge killed mid-pull** ([`an_edge_killed_mid_pull_keeps_every_change_once`]):
//!    edge A (direct to the hub) records thousands of changes and pushes
//!    them; edge B of the same site pulls them through a [`LinkSimulator`].
//!    Over several rounds B's `edge sync` is SIGKILLed at a seeded moment:
//!    after a random delay, or once a random number of bytes of the answer
//!    went down the link (a pull in flight), with the link sometimes
//!    throttled so pulls take seconds. After every kill B's SQLite file must
//!    pass `integrity_check`, store no change twice, hold only changes the
//!    hub has, and hold every change up to its cursor (a page is applied
//!    with its cursor, or not at all). A final clean sync leaves B with
//!    exactly the hub's changes, each once, and its cursor at the hub's
//!    newest entry.
//! 2. **The hub killed mid-push** ([`the_hub_killed_mid_push_loses_and_duplicates_nothing`]):
//!    an edge with a large backlog syncs; as soon as the hub has committed
//!    part of the push it is SIGKILLed; the sync must fail retryably; the
//!    hub restarts on the same database and address; several rounds, with
//!    more writes in between. After each kill: the hub holds each change at
//!    most once, only the edge's, and everything the edge marked as sent.
//!    In the end: the hub's log is exactly the outbox, and a second edge of
//!    the site pulls all of it, each change once.
//!
//! `SANTERURALE_KILL_SEED` replays the seeded choices (kill moments still
//! depend on timing); the link simulator's seed derives from it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use santerurale_e2e::{
    Api, CliChild, EdgeDir, EdgeProcess, HubChange, HubDir, HubProcess, LinkProfile, LinkSimulator, POLL_INTERVAL,
    check_integrity, create_site, enrollment_token, metric_value, open_read_only, poll_until, read_edge_documents,
    read_meta, read_outbox, seed_from_env,
};
use serde_json::json;

const HUB_ADMIN: &str = "hub-admin";
const HUB_PASSWORD: &str = "a long hub password";
const EDGE_USER: &str = "kill-admin";
const EDGE_PASSWORD: &str = "a long edge password";
/// The phrase `edge sync` prints for a retryable failure.
const RETRYABLE: &str = "will succeed once the hub is reachable again";
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);
/// Concurrent API writes while recording (the edge serialises them; this
/// only overlaps the HTTP round trips).
const WRITERS: usize = 8;
const PULL_KILL_ROUNDS: usize = 6;
const HUB_KILL_ROUNDS: usize = 3;

struct Hub {
    process: Option<HubProcess>,
    api: Api,
    url: String,
    dir: HubDir,
}

impl Hub {
    async fn start() -> anyhow::Result<Self> {
        let dir = HubDir::new().await?;
        dir.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(HUB_ADMIN, HUB_PASSWORD).await?;
        let url = process.base_url().to_owned();
        Ok(Self { process: Some(process), api, url, dir })
    }

    fn metrics_api(&self) -> anyhow::Result<Api> {
        self.process.as_ref().context("the hub is not running")?.api()
    }

    /// Starts the hub again on its old address, retrying while the kernel still holds the port.
    async fn restart(&mut self) -> anyhow::Result<()> {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let dir = &self.dir;
        let process = poll_until("the hub to restart on its old port", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move {
                match dir.start_on(&addr).await {
                    Ok(process) => Ok(Some(process)),
                    Err(e) if format!("{e:#}").contains("cannot listen on") => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
        self.process = Some(process);
        Ok(())
    }
}

/// An edge with a server and a signed-in client (for writes).
struct Writer {
    _process: EdgeProcess,
    api: Api,
    dir: EdgeDir,
}

impl Writer {
    async fn start(hub_url: &str, token: &str) -> anyhow::Result<Self> {
        let dir = EdgeDir::new()?;
        dir.add_user(EDGE_USER, "admin", EDGE_PASSWORD).await?;
        dir.cli(&["enroll", "--hub", hub_url, "--token", token], "").await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(EDGE_USER, EDGE_PASSWORD).await?;
        Ok(Self { _process: process, api, dir })
    }

    /// `patients` patients with `encounters` encounters each, written by
    /// [`WRITERS`] concurrent clients; the number of changes.
    async fn record(&self, rng: &mut StdRng, patients: usize, encounters: usize) -> anyhow::Result<usize> {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let api = self.api.clone();
            let count = patients / WRITERS + usize::from(w < patients % WRITERS);
            let ages: Vec<u32> = (0..count).map(|_| rng.random_range(0..90)).collect();
            tasks.spawn(async move {
                for age in ages {
                    let draft = json!({
                        "given_name": "Awa", "family_name": "Dembélé", "sex": "female",
                        "age_years": age, "village": "Bla",
                    });
                    let patient = api.register_patient(&draft, true).await?;
                    let id = patient["id"].as_str().context("patient without an id")?.to_owned();
                    for n in 0..encounters {
                        let draft = json!({
                            "kind": "consultation", "complaint": "toux",
                            "diagnosis": format!("infection respiratoire {n}"), "temperature_c": 37.9,
                        });
                        api.add_encounter(&id, &draft).await?;
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(patients * (1 + encounters))
    }
}

/// A bare edge data directory that only syncs (no server), enrolled through `link`.
async fn puller(link: &LinkSimulator, token: &str) -> anyhow::Result<EdgeDir> {
    let dir = EdgeDir::new()?;
    dir.cli(&["enroll", "--hub", &link.url(), "--token", token], "").await?;
    Ok(dir)
}

/// What a pulling edge holds: every change hash of its documents, after
/// checking that its file is sound and stores no change twice.
fn pulled_changes(db: &Path) -> anyhow::Result<BTreeSet<String>> {
    check_integrity(&open_read_only(db)?)?;
    let mut held = BTreeSet::new();
    for (patient, doc) in read_edge_documents(db)? {
        ensure!(doc.stored_twice.is_empty(), "patient {patient}: changes stored twice: {:?}", doc.stored_twice);
        held.extend(doc.summary.changes);
    }
    Ok(held)
}

fn cursor(db: &Path) -> anyhow::Result<i64> {
    Ok(read_meta(db, "sync_pull_cursor")?.map(|v| v.parse()).transpose()?.unwrap_or(0))
}

/// The invariant of pull at any moment: only hub changes, and every change
/// of the hub up to the cursor.
fn check_pull_consistent(db: &Path, log: &[HubChange]) -> anyhow::Result<(usize, i64)> {
    let held = pulled_changes(db)?;
    let cursor = cursor(db)?;
    let on_hub: BTreeSet<&str> = log.iter().map(|c| c.hash.as_str()).collect();
    if let Some(stray) = held.iter().find(|h| !on_hub.contains(h.as_str())) {
        anyhow::bail!("the edge holds change {stray}, which the hub does not");
    }
    if let Some(skipped) = log.iter().find(|c| c.hub_seq <= cursor && !held.contains(&c.hash)) {
        anyhow::bail!("cursor {cursor} is past hub_seq {} ({}), which the edge lacks", skipped.hub_seq, skipped.hash);
    }
    Ok((held.len(), cursor))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_mid_pull_keeps_every_change_once() -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = seed_from_env("SANTERURALE_KILL_SEED")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let hub = Hub::start().await?;
    let site = create_site(&hub.api, "CSCom de Bla", "BLA").await?;
    let writer = Writer::start(&hub.url, &enrollment_token(&hub.api, &site).await?).await?;
    let hub_addr = hub.process.as_ref().context("no hub")?.addr();
    let link = LinkSimulator::start(hub_addr, LinkProfile::clean(), seed).await?;
    let reader = puller(&link, &enrollment_token(&hub.api, &site).await?).await?;

    let recording = Instant::now();
    let mut written = writer.record(&mut rng, 500, 3).await?;
    let record_ms = recording.elapsed().as_millis();
    writer.dir.cli(&["sync"], "").await?;

    let (mut killed, mut finished) = (0, 0);
    let mut full_pull = Duration::from_secs(3);
    let mut wire_bytes_per_change = FIRST_WIRE_BYTES_PER_CHANGE;
    for round in 1..=PULL_KILL_ROUNDS {
        if round > 1 {
            let patients = rng.random_range(50..150);
            written += writer.record(&mut rng, patients, 2).await?;
            writer.dir.cli(&["sync"], "").await?;
        }
        let log = hub.dir.change_log().await?;
        // Every earlier kill point fell after its pull: this round's lands in
        // the first half of the bytes of a throttled pull, so the test
        // always kills at least one pull.
        let force_kill = round == PULL_KILL_ROUNDS && killed == 0;
        let throttled = rng.random_bool(0.4) || force_kill;
        link.set_profile(if throttled {
            LinkProfile::throttled(rng.random_range(400_000..2_000_000), Duration::from_millis(40))
        } else {
            LinkProfile::clean()
        });
        // Kill points over the whole pull: after a delay up to the last
        // whole pull's length, after a share of the bytes left to pull, or
        // as soon as a page is committed (more pages to come).
        let (held_before, _) = check_pull_consistent(&reader.db_path(), &log)?;
        let left = u64::try_from(log.len() - held_before)?;
        let bytes_before = link.stats().bytes_down;
        let byte_point = |rng: &mut StdRng, share: u64| {
            Kill::BytesDown(bytes_before + rng.random_range(1_000..=1_000 + left * wire_bytes_per_change / share))
        };
        let kill = if force_kill {
            byte_point(&mut rng, 2)
        } else {
            match rng.random_range(0..3) {
                0 => Kill::After(Duration::from_millis(rng.random_range(0..=full_pull.as_millis() as u64))),
                1 => byte_point(&mut rng, 1),
                _ => Kill::PageApplied(cursor(&reader.db_path())?),
            }
        };
        let spawned = Instant::now();
        let mut sync = reader.spawn_cli(&["sync"])?;
        // Seeded kill points, not synchronisation: the checks hold wherever they land.
        let running = until_kill_point(kill, &link, &reader.db_path(), &mut sync).await?;
        let status = if running { sync.kill().await? } else { sync.wait().await? };
        let end = if status.signal() == Some(9) {
            killed += 1;
            format!("killed {kill}")
        } else {
            ensure!(status.success(), "round {round}: {} failed ({status}):\n{}", sync.shown(), sync.output());
            full_pull = spawned.elapsed();
            finished += 1;
            let pulled = u64::try_from(pulled_changes(&reader.db_path())?.len().saturating_sub(held_before))?;
            if let Some(per_change) = (link.stats().bytes_down - bytes_before).checked_div(pulled) {
                wire_bytes_per_change = per_change.max(20);
            }
            format!("finished before {kill}")
        };
        let (held, cursor) =
            check_pull_consistent(&reader.db_path(), &log).with_context(|| format!("after round {round}: {end}"))?;
        println!(
            "pull round {round}: {end:<40} ({:5} ms, {}); holds {held:5} of {} hub changes, cursor {cursor}",
            spawned.elapsed().as_millis(),
            if throttled { "throttled" } else { "clean link" },
            log.len()
        );
    }

    link.set_profile(LinkProfile::clean());
    let said = reader.cli(&["sync"], "").await?;
    let log = hub.dir.change_log().await?;
    ensure!(log.len() == written, "the hub holds {} changes, {written} were written", log.len());
    let held = pulled_changes(&reader.db_path())?;
    let on_hub: BTreeSet<String> = log.iter().map(|c| c.hash.clone()).collect();
    ensure!(held == on_hub, "after a final sync the edge holds {} changes, the hub {}", held.len(), on_hub.len());
    let newest = log.iter().map(|c| c.hub_seq).max().unwrap_or(0);
    ensure!(cursor(&reader.db_path())? == newest, "the edge's cursor is not the hub's newest entry {newest}");
    ensure!(killed > 0, "no pull was killed in {PULL_KILL_ROUNDS} rounds");
    println!(
        "edge kills mid-pull (seed {seed}): {written} changes recorded ({record_ms} ms for the first 2000); \
         {killed} pulls killed, {finished} finished; final sync said {:?}; the edge holds exactly the hub's {} \
         changes, cursor {newest}; link {:?}; {:.1} s",
        said.trim(),
        log.len(),
        link.stats(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What one pulled change is first taken to cost on the wire, to draw byte
/// kill points over the whole pull; low on purpose (a kill point drawn too
/// early still lands mid-pull, one drawn too late lands after it). Each
/// finished round replaces it with what that round measured (about 100 B
/// with raw changes compressed together).
const FIRST_WIRE_BYTES_PER_CHANGE: u64 = 60;

/// When a round SIGKILLs the pulling `edge sync`.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This long after it was spawned.
    After(Duration),
    /// Once the link has carried this many bytes down in all.
    BytesDown(u64),
    /// Once the edge's pull cursor has moved from this value (a page is committed).
    PageApplied(i64),
}

impl std::fmt::Display for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::After(d) => write!(f, "at {} ms", d.as_millis()),
            Self::BytesDown(n) => write!(f, "at {n} bytes down"),
            Self::PageApplied(c) => write!(f, "after a page past cursor {c}"),
        }
    }
}

/// Waits for `kill`'s moment (true) or for `sync` to end (false).
async fn until_kill_point(kill: Kill, link: &LinkSimulator, db: &Path, sync: &mut CliChild) -> anyhow::Result<bool> {
    if let Kill::After(delay) = kill {
        return Ok(sync.wait_for(delay).await?.is_none());
    }
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        if sync.try_status()?.is_some() {
            return Ok(false);
        }
        let reached = match kill {
            Kill::BytesDown(n) => link.stats().bytes_down >= n,
            Kill::PageApplied(c) => cursor(db)? != c,
            Kill::After(_) => true,
        };
        if reached {
            return Ok(true);
        }
        ensure!(Instant::now() < deadline, "{} neither ended nor reached {kill} within {SYNC_TIMEOUT:?}", sync.shown());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Upload rate of the pushing edge's link in the hub-kill scenario: slow
/// enough that a push of a few hundred changes (tens of KB once compressed)
/// is in flight for a second or more.
const UPLOAD_BITS_PER_SEC: u64 = 256_000;
/// A little less than what one pushed change costs on the wire (about
/// 100 B in the sync bench), so that upload kill points fall inside the push.
const UPLOAD_BYTES_PER_CHANGE: u64 = 80;

/// Polls until `threshold` bytes have gone up the link (true) or `sync` ended (false).
async fn until_bytes_up(link: &LinkSimulator, sync: &mut CliChild, threshold: u64) -> anyhow::Result<bool> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        if sync.try_status()?.is_some() {
            return Ok(false);
        }
        if link.stats().bytes_up >= threshold {
            return Ok(true);
        }
        ensure!(Instant::now() < deadline, "{} neither ended nor pushed within {SYNC_TIMEOUT:?}", sync.shown());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls until the hub has applied more than `before` changes (true) or
/// `sync` ended (false).
async fn until_hub_applies(hub: &Api, sync: &mut CliChild, before: f64) -> anyhow::Result<bool> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        if sync.try_status()?.is_some() {
            return Ok(false);
        }
        if metric_value(&hub.text("/metrics").await?, "sync_changes_applied_total", "") > before {
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

/// At any moment: each change on the hub once and from the outbox; every
/// change marked as sent on the hub.
fn check_push_consistent(
    outbox: &BTreeMap<String, santerurale_e2e::OutboxRow>,
    log: &[HubChange],
) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for change in log {
        ensure!(seen.insert(change.hash.as_str()), "the hub holds change {} twice", change.hash);
        ensure!(outbox.contains_key(&change.hash), "the hub holds {}, not in the outbox", change.hash);
    }
    if let Some((hash, _)) = outbox.iter().find(|(h, r)| r.acked && !seen.contains(h.as_str())) {
        anyhow::bail!("outbox change {hash} is marked as sent but not on the hub");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_killed_mid_push_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = seed_from_env("SANTERURALE_KILL_SEED")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hub = Hub::start().await?;
    let site = create_site(&hub.api, "CSCom de Fana", "FANA").await?;
    // The writer pushes through a throttled link, so a push is in flight
    // long enough to kill the hub while it receives one.
    let hub_addr = hub.process.as_ref().context("no hub")?.addr();
    let up_link = LinkSimulator::start(hub_addr, LinkProfile::clean(), seed).await?;
    let writer = Writer::start(&up_link.url(), &enrollment_token(&hub.api, &site).await?).await?;
    up_link.set_profile(LinkProfile { up_bits_per_sec: Some(UPLOAD_BITS_PER_SEC), ..LinkProfile::clean() });
    let second_token = enrollment_token(&hub.api, &site).await?;

    let mut written = 0;
    let (mut hub_kills, mut mid_push, mut attempts) = (0, 0, 0);
    while mid_push < HUB_KILL_ROUNDS {
        attempts += 1;
        ensure!(attempts <= 3 * HUB_KILL_ROUNDS, "only {mid_push} of {attempts} hub kills landed mid-push");
        let patients = rng.random_range(150..250);
        written += writer.record(&mut rng, patients, 2).await?;
        let metrics = hub.metrics_api()?;
        let before = metric_value(&metrics.text("/metrics").await?, "sync_changes_applied_total", "");
        let pending = read_outbox(&writer.dir.db_path())?.values().filter(|r| !r.acked).count();
        // Mostly once a random share of the upload went through (the hub
        // holds half a request), else once the hub committed a batch (which
        // lands mid-push only when the push takes several batches).
        let by_bytes = rng.random_bool(0.75);
        let sent_before = up_link.stats().bytes_up;
        let threshold =
            sent_before + rng.random_range(1_000..=1_000 + u64::try_from(pending)? * UPLOAD_BYTES_PER_CHANGE);
        let mut sync = writer.dir.spawn_cli(&["sync"])?;
        let reached = if by_bytes {
            until_bytes_up(&up_link, &mut sync, threshold).await?
        } else {
            until_hub_applies(&metrics, &mut sync, before).await?
        };
        if !reached {
            let status = sync.wait().await?;
            ensure!(status.success(), "{} failed ({status}):\n{}", sync.shown(), sync.output());
            println!("hub kill attempt {attempts}: the sync ended before its kill point; again");
            continue;
        }
        let mut process = hub.process.take().context("the hub is not running")?;
        let status = process.kill()?;
        ensure!(status.signal() == Some(9), "the hub ended with {status}, not by SIGKILL");
        hub_kills += 1;
        let status = sync.wait().await?;
        let said = sync.output();
        ensure!(
            status.success() || said.contains(RETRYABLE),
            "{} after the hub's kill ({status}):\n{said}",
            sync.shown()
        );
        let outbox = read_outbox(&writer.dir.db_path())?;
        let log = hub.dir.change_log().await?;
        check_push_consistent(&outbox, &log).with_context(|| format!("after hub kill {hub_kills}"))?;
        let pending = outbox.values().filter(|r| !r.acked).count();
        // All sent and marked: the kill hit the pull that follows a push.
        let during = if pending > 0 {
            mid_push += 1;
            "mid-push"
        } else {
            "after the push"
        };
        println!(
            "hub kill {hub_kills} ({during}, {}): sync {}; hub holds {} of {} outbox changes, {pending} pending",
            if by_bytes { format!("{} bytes up", threshold - sent_before) } else { "after a hub commit".to_owned() },
            if status.success() { "had finished" } else { "failed retryably" },
            log.len(),
            outbox.len()
        );
        hub.restart().await?;
    }

    let said =
        writer.dir.cli(&["sync"], "").await.with_context(|| format!("final sync; hub log:\n{}", hub.dir.log()))?;
    let outbox = read_outbox(&writer.dir.db_path())?;
    let log = hub.dir.change_log().await?;
    check_push_consistent(&outbox, &log)?;
    ensure!(
        outbox.len() == written && log.len() == written,
        "{written} written, outbox {}, hub {}",
        outbox.len(),
        log.len()
    );
    ensure!(outbox.values().all(|r| r.acked), "outbox rows left unsent after the final sync");

    // A second box of the site pulls all of it, each change once.
    let hub_addr = hub.process.as_ref().context("no hub")?.addr();
    let link = LinkSimulator::start(hub_addr, LinkProfile::clean(), seed).await?;
    let reader = puller(&link, &second_token).await?;
    reader.cli(&["sync"], "").await?;
    let held = pulled_changes(&reader.db_path())?;
    ensure!(held.iter().eq(outbox.keys()), "the second edge holds {} changes, the hub {}", held.len(), log.len());
    println!(
        "hub kills mid-push (seed {seed}): {written} changes, {hub_kills} hub kills ({mid_push} mid-push) in \
         {attempts} attempts; final sync said {:?}; hub log == outbox, each once; a second edge pulled all {}; {:.1} s",
        said.trim(),
        held.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
