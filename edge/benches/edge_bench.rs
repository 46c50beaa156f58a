//! Edge benchmark: the figures the issue sets targets for, measured on a
//! database seeded with synthetic patients (`santerurale-fixtures`, seed 42).
//!
//! `cargo bench -p edge --bench edge_bench` seeds `EDGE_BENCH_PATIENTS`
//! patients (default 100,000) with three encounters each, then measures:
//! search latency through `Store::search` (the path an HTTP handler takes),
//! durable write latency (one `synchronous=FULL` transaction per write),
//! database bytes per patient, the release binary's size, and the cold start
//! and idle memory of `edge serve` on the seeded data directory.
//!
//! It prints figures next to their targets and asserts nothing about timings:
//! a slow CI machine must not fail a build. Run it on the hardware the target
//! is about before drawing conclusions.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edge::store::{Store, StoreOptions};
use santerurale_fixtures::Generator;
use santerurale_shared::patient::format_date;
use santerurale_shared::text::fold;
use santerurale_shared::{EncounterDraft, EncounterFields, PatientFields, PatientId};
use time::OffsetDateTime;

const DEFAULT_PATIENTS: usize = 100_000;
const ENCOUNTERS_PER_PATIENT: usize = 3;
const PATIENTS_PER_TX: usize = 1_000;
const SEED: u64 = 42;
/// Patients kept aside (with their ids) to build queries and pick write targets.
const SAMPLES: usize = 5_000;
const SEARCHES: usize = 2_000;
const WRITES: usize = 500;
const COLD_STARTS: usize = 5;
const HEALTH_POLL: Duration = Duration::from_millis(2);
const START_DEADLINE: Duration = Duration::from_secs(30);
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(3);

/// The targets.
const TARGET_SEARCH_P99_MS: f64 = 5.0;
const TARGET_ENCOUNTER_WRITE_P99_MS: f64 = 10.0;
const TARGET_IDLE_RSS_MB: f64 = 30.0;
const TARGET_COLD_START_MS: f64 = 300.0;
const TARGET_BINARY_MB: f64 = 15.0;

fn main() -> Result<()> {
    let patients = match std::env::var("EDGE_BENCH_PATIENTS") {
        Ok(v) => v.replace('_', "").parse().context("EDGE_BENCH_PATIENTS must be a whole number")?,
        Err(_) => DEFAULT_PATIENTS,
    };
    let today = OffsetDateTime::now_utc().date();
    let dir = tempfile::tempdir().context("temporary data directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("edge bench: {patients} patients x {ENCOUNTERS_PER_PATIENT} encounters, seed {SEED}, today {today}");
    println!("data directory: {}", dir.path().display());

    let store = Store::open(dir.path(), StoreOptions::default())?;
    let mut generator = Generator::new(SEED, today);
    let samples = seed(&store, &mut generator, patients)?;
    let mut search = search_latency(&rt, &store, &samples)?;
    let mut writes = write_latency(&rt, &store, &mut generator, &samples)?;
    let db_path = store.path().to_owned();
    drop(store);
    let total_patients = patients + WRITES;
    let bytes_per_patient = database_size(&db_path, total_patients)?;
    let binary_mb = binary_size()?;
    let server = match server_figures(dir.path()) {
        Ok(s) => Some(s),
        Err(e) => {
            println!("\nedge serve: not measured: {e:#}");
            None
        }
    };

    println!("\n== summary ({patients} patients seeded) ==");
    let row = |name: &str, value: String, target: &str, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "meets",
            Some(false) => "MISSES",
            None => "",
        };
        println!("{name:<32} {value:>14}   {target:<10} {verdict}");
    };
    row("figure", "measured".into(), "target", None);
    let search_p99 = search.p(0.99);
    row("search p99", ms(search_p99), "<= 5 ms", Some(millis(search_p99) <= TARGET_SEARCH_P99_MS));
    let enc_p99 = writes.encounter.p(0.99);
    row("encounter write p99", ms(enc_p99), "<= 10 ms", Some(millis(enc_p99) <= TARGET_ENCOUNTER_WRITE_P99_MS));
    row("patient write p99", ms(writes.register.p(0.99)), "", None);
    match &server {
        Some(s) => {
            row("idle RSS", format!("{:.1} MB", s.idle_rss_mb), "<= 30 MB", Some(s.idle_rss_mb <= TARGET_IDLE_RSS_MB));
            let median = millis(s.cold_start_median);
            row("cold start (median)", format!("{median:.1} ms"), "<= 300 ms", Some(median <= TARGET_COLD_START_MS));
        }
        None => {
            row("idle RSS", "n/a".into(), "<= 30 MB", None);
            row("cold start (median)", "n/a".into(), "<= 300 ms", None);
        }
    }
    row("release binary", format!("{binary_mb:.2} MB"), "<= 15 MB", Some(binary_mb <= TARGET_BINARY_MB));
    row("database per patient", format!("{bytes_per_patient:.0} B"), "", None);
    println!("(MB = 10^6 bytes; latencies through the async Store API on a multi-thread tokio runtime)");
    Ok(())
}

/// A seeded patient kept to build queries and pick write targets.
#[derive(Debug)]
struct Sample {
    id: PatientId,
    fields: PatientFields,
}

/// Seeds `n` patients in transactions of [`PATIENTS_PER_TX`]; returns about
/// [`SAMPLES`] of them, spread over the whole run.
fn seed(store: &Store, generator: &mut Generator, n: usize) -> Result<Vec<Sample>> {
    let keep_every = (n / SAMPLES).max(1);
    let mut samples = Vec::new();
    let (mut generating, mut writing) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    let progress_every = (n / 10).max(PATIENTS_PER_TX);
    while done < n {
        let size = PATIENTS_PER_TX.min(n - done);
        let t = Instant::now();
        let batch: Vec<(PatientFields, Vec<EncounterFields>)> = (0..size)
            .map(|_| {
                let p = generator.patient();
                let e = (0..ENCOUNTERS_PER_PATIENT).map(|_| generator.encounter(&p)).collect();
                (p, e)
            })
            .collect();
        generating += t.elapsed();

        let t = Instant::now();
        let now = OffsetDateTime::now_utc();
        let ids = store.blocking_write(|w| {
            let mut ids = Vec::with_capacity(batch.len());
            for (fields, encounters) in &batch {
                let p = w.register_fields(PatientId::new(), fields, now)?;
                for e in encounters {
                    w.add_encounter_fields(p.id, e, "bench", now)?;
                }
                ids.push(p.id);
            }
            Ok(ids)
        })?;
        writing += t.elapsed();

        for (i, (id, (fields, _))) in ids.into_iter().zip(batch).enumerate() {
            if (done + i) % keep_every == 0 {
                samples.push(Sample { id, fields });
            }
        }
        done += size;
        if done % progress_every == 0 && done < n {
            println!("  seeded {done} patients ({:.1} s writing)", writing.as_secs_f64());
        }
    }
    let secs = writing.as_secs_f64();
    let changes = n * (1 + ENCOUNTERS_PER_PATIENT);
    println!("\n== seeding ==");
    println!(
        "{n} patients + {} encounters in {secs:.1} s of writes: {:.0} patients/s, {:.0} document changes/s \
         ({PATIENTS_PER_TX} patients per transaction; generating the data took a further {:.1} s)",
        n * ENCOUNTERS_PER_PATIENT,
        per_second(n, secs),
        per_second(changes, secs),
        generating.as_secs_f64()
    );
    Ok(samples)
}

/// What a query looks for, to report latencies per shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryKind {
    /// "TRAORE aminata": family name first, upper case, no accents.
    NameSwappedUpper,
    /// "Aminata Traoré", as written.
    NameAsWritten,
    /// "trao ami": the first letters of both names.
    NamePrefixes,
    /// "Kon": the first letters of a family name alone (many matches).
    FamilyPrefix,
    /// "76 12 34 56": a phone number in local formatting.
    PhoneLocal,
    /// A national id as written on the card.
    NationalId,
}

impl QueryKind {
    const ALL: [Self; 6] = [
        Self::NameSwappedUpper,
        Self::NameAsWritten,
        Self::NamePrefixes,
        Self::FamilyPrefix,
        Self::PhoneLocal,
        Self::NationalId,
    ];

    /// The mix of a clinic's search box: names mostly, phones often.
    fn for_index(i: usize) -> Self {
        match i % 10 {
            0..=2 => Self::NameSwappedUpper,
            3 => Self::NameAsWritten,
            4 => Self::NamePrefixes,
            5 => Self::FamilyPrefix,
            6..=8 => Self::PhoneLocal,
            _ => Self::NationalId,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::NameSwappedUpper => "name, swapped, upper, no accents",
            Self::NameAsWritten => "name as written",
            Self::NamePrefixes => "prefixes of both names",
            Self::FamilyPrefix => "family-name prefix alone",
            Self::PhoneLocal => "phone, local format",
            Self::NationalId => "national id",
        }
    }

    /// Does the query name one patient (who should then be among the results)?
    fn targets_one(self) -> bool {
        self != Self::FamilyPrefix
    }
}

/// The query of `kind` for `s`, or `None` when `s` lacks the field.
fn query(kind: QueryKind, s: &PatientFields) -> Option<String> {
    let prefix = |name: &str, n: usize| fold(name).chars().take(n).collect::<String>();
    match kind {
        QueryKind::NameSwappedUpper => Some(format!("{} {}", fold(&s.family_name).to_uppercase(), fold(&s.given_name))),
        QueryKind::NameAsWritten => Some(format!("{} {}", s.given_name, s.family_name)),
        QueryKind::NamePrefixes => Some(format!("{} {}", prefix(&s.family_name, 4), prefix(&s.given_name, 3))),
        QueryKind::FamilyPrefix => Some(prefix(&s.family_name, 3)),
        QueryKind::PhoneLocal => {
            let national = s.phone.as_ref()?.national_digits("223")?.to_owned();
            let pairs: Vec<&str> = (0..national.len()).step_by(2).filter_map(|i| national.get(i..i + 2)).collect();
            Some(pairs.join(" "))
        }
        QueryKind::NationalId => s.national_id.clone(),
    }
}

fn search_latency(rt: &tokio::runtime::Runtime, store: &Store, samples: &[Sample]) -> Result<Latencies> {
    // Build the queries first; a sample lacking a phone or national id hands
    // its turn to the next sample that has one.
    let mut queries = Vec::with_capacity(SEARCHES);
    for i in 0..SEARCHES {
        let kind = QueryKind::for_index(i);
        let start = i.wrapping_mul(7_919) % samples.len();
        let found = (0..samples.len())
            .map(|k| &samples[(start + k) % samples.len()])
            .find_map(|s| query(kind, &s.fields).map(|q| (q, s.id)));
        if let Some((q, id)) = found {
            queries.push((kind, q, id));
        }
    }
    // Warm the page cache and the prepared statements as a running clinic would have.
    for (_, q, _) in queries.iter().take(100) {
        rt.block_on(store.search(q.clone(), 50))?;
    }

    let mut all = Latencies::default();
    let mut by_kind: Vec<(QueryKind, Latencies)> = QueryKind::ALL.iter().map(|k| (*k, Latencies::default())).collect();
    let (mut empty, mut targeted, mut hit) = (0, 0, 0);
    for (kind, q, id) in &queries {
        let t = Instant::now();
        let results = rt.block_on(store.search(q.clone(), 50))?;
        let elapsed = t.elapsed();
        all.push(elapsed);
        if let Some((_, l)) = by_kind.iter_mut().find(|(k, _)| k == kind) {
            l.push(elapsed);
        }
        if results.is_empty() {
            empty += 1;
        }
        if kind.targets_one() {
            targeted += 1;
            if results.iter().any(|p| p.id == *id) {
                hit += 1;
            }
        }
    }
    println!("\n== search (limit 50, {} queries) ==", all.len());
    println!("{:<34} {:>6} {:>11} {:>11} {:>11}", "query", "count", "p50", "p99", "max");
    for (kind, l) in by_kind.iter_mut().filter(|(_, l)| l.len() != 0) {
        println!("{:<34} {:>6} {:>11} {:>11} {:>11}", kind.label(), l.len(), ms(l.p(0.5)), ms(l.p(0.99)), ms(l.max()));
    }
    println!("{:<34} {:>6} {:>11} {:>11} {:>11}", "all", all.len(), ms(all.p(0.5)), ms(all.p(0.99)), ms(all.max()));
    println!(
        "queries with no result: {empty}; sought patient among the results: {hit} of {targeted} \
         (common names have more than 50 namesakes)"
    );
    for (_, q, _) in queries.iter().step_by(SEARCHES / 10).take(6) {
        println!("  e.g. {q:?}");
    }
    Ok(all)
}

#[derive(Debug)]
struct WriteFigures {
    register: Latencies,
    encounter: Latencies,
}

fn write_latency(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    generator: &mut Generator,
    samples: &[Sample],
) -> Result<WriteFigures> {
    let mut register = Latencies::default();
    for _ in 0..WRITES {
        let draft = generator.patient().to_draft();
        let t = Instant::now();
        rt.block_on(store.register_patient(draft, true))?;
        register.push(t.elapsed());
    }
    let mut encounter = Latencies::default();
    for i in 0..WRITES {
        let s = &samples[i.wrapping_mul(31) % samples.len()];
        let draft = encounter_draft(&generator.encounter(&s.fields));
        let t = Instant::now();
        rt.block_on(store.add_encounter(s.id, draft, "bench".into()))?;
        encounter.push(t.elapsed());
    }
    let mut reads = Latencies::default();
    for i in 0..WRITES {
        let s = &samples[i.wrapping_mul(17) % samples.len()];
        let t = Instant::now();
        rt.block_on(store.get_patient(s.id))?.context("a seeded patient is missing")?;
        reads.push(t.elapsed());
    }
    println!("\n== writes (each one durable transaction, synchronous=FULL) ==");
    println!("{:<34} {:>6} {:>11} {:>11} {:>11}", "operation", "count", "p50", "p99", "max");
    for (name, l) in [
        ("register_patient (no dup. check)", &mut register),
        ("add_encounter (existing patient)", &mut encounter),
        ("get_patient with encounters (read)", &mut reads),
    ] {
        println!("{:<34} {:>6} {:>11} {:>11} {:>11}", name, l.len(), ms(l.p(0.5)), ms(l.p(0.99)), ms(l.max()));
    }
    Ok(WriteFigures { register, encounter })
}

fn encounter_draft(e: &EncounterFields) -> EncounterDraft {
    EncounterDraft {
        date: Some(format_date(e.date)),
        kind: Some(e.kind.as_str().to_owned()),
        complaint: Some(e.complaint.clone()),
        diagnosis: Some(e.diagnosis.clone()),
        icd10: e.icd10.clone(),
        weight_kg: e.weight_kg,
        temperature_c: e.temperature_c,
        bp_systolic: e.bp_systolic.map(f64::from),
        bp_diastolic: e.bp_diastolic.map(f64::from),
        notes: Some(e.notes.clone()),
    }
}

/// Checkpoints the WAL into the main file and prints the size per patient,
/// overall and per table and index. Returns bytes per patient.
fn database_size(db: &Path, patients: usize) -> Result<f64> {
    let conn = rusqlite::Connection::open(db)?;
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if busy != 0 {
        println!("warning: the WAL checkpoint was blocked; sizes include the WAL");
    }
    let file_len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let total = file_len(db) + file_len(Path::new(&wal));
    let per_patient = total as f64 / patients as f64;
    println!("\n== database size ==");
    println!(
        "{total} bytes ({:.1} MB) for {patients} patients and {} encounters: {per_patient:.0} bytes per patient",
        total as f64 / 1e6,
        patients * ENCOUNTERS_PER_PATIENT + WRITES
    );
    // dbstat is compiled into the bundled SQLite; skip the breakdown if not.
    let breakdown = conn
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 12")
        .and_then(|mut stmt| stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?.collect());
    match breakdown {
        Ok(rows) => {
            let rows: Vec<(String, i64)> = rows;
            for (name, bytes) in rows {
                println!("  {name:<40} {bytes:>12} bytes  {:>7.0} per patient", bytes as f64 / patients as f64);
            }
        }
        Err(e) => println!("  (no per-table breakdown: {e})"),
    }
    Ok(per_patient)
}

/// Size of the `edge` binary cargo built for this bench (the `bench`
/// profile inherits `release`, stripped). Returns MB.
fn binary_size() -> Result<f64> {
    let path = Path::new(env!("CARGO_BIN_EXE_edge"));
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // A stripped ELF file has no symbol table section, so no section named .symtab.
    let stripped = !bytes.windows(9).any(|w| w == b"\0.symtab\0");
    let mb = bytes.len() as f64 / 1e6;
    println!("\n== binary ==");
    println!(
        "{}: {} bytes ({mb:.2} MB, {:.2} MiB), {}",
        path.display(),
        bytes.len(),
        bytes.len() as f64 / 1_048_576.0,
        if stripped { "stripped" } else { "NOT stripped" }
    );
    Ok(mb)
}

#[derive(Debug)]
struct ServerFigures {
    cold_start_median: Duration,
    idle_rss_mb: f64,
}

/// Starts `edge serve` on the seeded data directory [`COLD_STARTS`] times,
/// timing spawn to the first healthy answer, then reads the idle memory of
/// the last one.
fn server_figures(data_dir: &Path) -> Result<ServerFigures> {
    let bin = Path::new(env!("CARGO_BIN_EXE_edge"));
    let logs = tempfile::tempdir()?;
    let mut starts = Vec::with_capacity(COLD_STARTS);
    let mut last = None;
    for i in 0..COLD_STARTS {
        let port = free_port()?;
        let log = logs.path().join(format!("serve-{i}.log"));
        let t = Instant::now();
        let mut child = spawn_serve(bin, data_dir, port, &log)?;
        let ready = wait_healthy(&mut child, port, t, &log);
        match ready {
            Ok(elapsed) => starts.push(elapsed),
            Err(e) => {
                stop(&mut child);
                return Err(e);
            }
        }
        if i + 1 == COLD_STARTS {
            last = Some((child, port));
        } else {
            stop(&mut child);
        }
    }
    starts.sort();
    let median = starts[starts.len() / 2];
    println!("\n== edge serve ==");
    println!(
        "cold start, spawn to first 200 from GET /health ({COLD_STARTS} runs, page cache warm): min {}, median {}, max {}",
        ms(starts[0]),
        ms(median),
        ms(starts[starts.len() - 1])
    );

    let Some((mut child, port)) = last else { bail!("no server left running") };
    let result = idle_rss(&child, port);
    stop(&mut child);
    let (rss_kb, hwm_kb) = result?;
    let idle_rss_mb = rss_kb as f64 * 1024.0 / 1e6;
    println!(
        "idle RSS after {} requests and {} s idle: {idle_rss_mb:.1} MB (VmRSS {rss_kb} kB; peak VmHWM {hwm_kb} kB)",
        IDLE_REQUESTS,
        IDLE_BEFORE_RSS.as_secs()
    );
    Ok(ServerFigures { cold_start_median: median, idle_rss_mb })
}

const IDLE_REQUESTS: usize = 20;

fn idle_rss(child: &Child, port: u16) -> Result<(u64, u64)> {
    for i in 0..IDLE_REQUESTS {
        let path = if i % 2 == 0 { "/health" } else { "/" };
        http_get(port, path).with_context(|| format!("GET {path}"))?;
    }
    std::thread::sleep(IDLE_BEFORE_RSS);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).context("reading /proc/PID/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in status"))?;
        let kb = line.split_whitespace().nth(1).context("malformed status line")?;
        Ok(kb.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn spawn_serve(bin: &Path, data_dir: &Path, port: u16, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    Command::new(bin)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

/// Polls `GET /health` every [`HEALTH_POLL`] until it answers 200; returns the
/// time since `spawned`.
fn wait_healthy(child: &mut Child, port: u16, spawned: Instant, log: &Path) -> Result<Duration> {
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("edge serve exited with {status} before answering; its output:\n{}", tail(log));
        }
        if let Ok(200) = http_get(port, "/health") {
            return Ok(spawned.elapsed());
        }
        if spawned.elapsed() > START_DEADLINE {
            bail!("edge serve did not answer GET /health within {START_DEADLINE:?}; its output:\n{}", tail(log));
        }
        std::thread::sleep(HEALTH_POLL);
    }
}

/// One HTTP/1.1 GET on a fresh connection; returns the status code.
fn http_get(port: u16, path: &str) -> Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    let code = head.split_whitespace().nth(1).context("no status line")?;
    Ok(code.parse()?)
}

fn stop(child: &mut Child) {
    // The child is ours; if it already exited, kill fails harmlessly.
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Latency samples; percentiles by nearest rank.
#[derive(Debug, Default)]
struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    fn push(&mut self, d: Duration) {
        self.samples.push(d);
        self.sorted = false;
    }

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn p(&mut self, q: f64) -> Duration {
        if !self.sorted {
            self.samples.sort();
            self.sorted = true;
        }
        let n = self.samples.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.samples[rank - 1]
    }

    fn max(&mut self) -> Duration {
        self.p(1.0)
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", millis(d))
}

fn per_second(count: usize, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { f64::INFINITY }
}
