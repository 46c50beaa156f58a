//! DHIS2 export benchmark (issue 4): a month's values for 1,000 sites with
//! 3,000 encounters each (synthetic), time and memory.
//!
//! On a fresh database of the PostgreSQL server at `HUB_BENCH_ADMIN_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth),
//! dropped at the end: the hub's migrations, then `DHIS2_BENCH_SITES` sites
//! (default 1,000), each with one device, about a third as many patients as
//! encounters (10% of them registered during the month) and
//! `DHIS2_BENCH_ENCOUNTERS` encounters (default 3,000) dated in April 2024,
//! of every kind, ages 0 to 74. Rows are generated in SQL (`generate_series`)
//! straight into the projection tables, then analysed.
//!
//! Timed, `DHIS2_BENCH_RUNS` times (default 5; min and median printed), with
//! the shipped default mapping resolved to fake uids:
//! - `all_site_values`: one grouped query for every site, then the
//!   indicators evaluated in Rust; and its two halves apart: the grouped
//!   query (PostgreSQL, transfer and decoding) and `evaluate` (Rust);
//! - `build_payload` for every site, and the payloads serialised to JSON (as
//!   the export jobs store them);
//! - once: `site_values` site by site, as the export jobs count (one query
//!   per site through the `(site_id, date)` index);
//! - once each: the daily late-data check (`dhis2_late_data::find`) with
//!   every site's export recorded as sent and nothing changed, then with a
//!   late consultation at 10 sites.
//!
//! The process's peak RSS (VmHWM of `/proc/self/status`) is printed at the
//! end: it holds every site's groups, values and payloads at once.
//!
//! `cargo bench -p hub --bench dhis2_export`. Nothing here asserts a speed.
//! `DHIS2_BENCH_KEEP_DB=1` keeps the database (its name is printed), to
//! study the queries with `EXPLAIN ANALYZE`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hub::dhis2::aggregate::{self, ExportSite};
use hub::dhis2::mapping::Mapping;
use hub::dhis2::payload::DataValueSet;
use hub::dhis2::period::Period;
use time::macros::date;

use crate::common::BenchDb;

mod common;

fn main() -> anyhow::Result<()> {
    let sites = env_usize("DHIS2_BENCH_SITES", 1_000)?;
    let encounters = env_usize("DHIS2_BENCH_ENCOUNTERS", 3_000)?;
    let runs = env_usize("DHIS2_BENCH_RUNS", 5)?.max(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let db = rt.block_on(BenchDb::create("hub_bench_dhis2_"))?;
    let result = rt.block_on(run(&db, sites, encounters, runs));
    if std::env::var_os("DHIS2_BENCH_KEEP_DB").is_some() {
        eprintln!("kept the database {} (DHIS2_BENCH_KEEP_DB): drop it when done", db.name);
    } else if let Err(e) = rt.block_on(db.drop_db()) {
        eprintln!("could not drop {}: {e:#}", db.name);
    }
    result
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

async fn run(db: &BenchDb, sites: usize, encounters: usize, runs: usize) -> anyhow::Result<()> {
    let pool = db.pool(4)?;
    hub::db::migrate::run(&pool).await.context("migrations")?;
    let patients = (encounters / 3).max(1);
    println!(
        "DHIS2 export benchmark: {sites} sites x {encounters} encounters ({} in all), {patients} patients per site, \
         period 202404, {runs} runs",
        sites * encounters
    );

    let started = Instant::now();
    seed(&pool, sites, encounters, patients).await?;
    let seeding = started.elapsed();
    println!("seeding (generate_series INSERT ... SELECT, then ANALYZE): {:.1} s", seeding.as_secs_f64());
    let (rss_before, _) = memory()?;

    let mapping = resolved_default();
    let period = Period::parse("202404").context("period")?;
    let complete = date!(2024 - 05 - 02);
    let export_sites = aggregate::export_sites(&pool, None).await?;

    let mut whole = Vec::new();
    let mut query = Vec::new();
    let mut evaluate = Vec::new();
    let mut payloads = Vec::new();
    let mut json = Vec::new();
    let mut totals = (0_u64, 0_usize, 0_usize);
    for _ in 0..runs {
        // all_site_values + build_payload for every site: what an all-sites
        // export computes.
        let t = Instant::now();
        let values = aggregate::all_site_values(&pool, &mapping, period).await?;
        whole.push(t.elapsed());
        let t = Instant::now();
        let sets = build_all(&mapping, &export_sites, period, &values, complete)?;
        payloads.push(t.elapsed());
        let t = Instant::now();
        let bytes: usize = sets.iter().map(|s| serde_json::to_vec(s).map(|v| v.len())).sum::<Result<_, _>>()?;
        json.push(t.elapsed());
        totals = (
            values
                .iter()
                .flat_map(|(_, v)| v.iter().filter(|v| v.data_element_code == "CONS_TOTAL"))
                .map(|v| v.value)
                .sum(),
            sets.iter().map(|s| s.data_values.len()).sum(),
            bytes,
        );

        // The same split in two: the grouped query, then the evaluation.
        let t = Instant::now();
        let groups = aggregate::groups(&pool, &mapping, period, None).await?;
        query.push(t.elapsed());
        let t = Instant::now();
        let evaluated: usize = groups.values().map(|g| aggregate::evaluate(&mapping, g).len()).sum();
        evaluate.push(t.elapsed());
        anyhow::ensure!(evaluated == groups.len() * mapping.indicators.len(), "evaluated {evaluated}");
    }
    let group_rows: usize = aggregate::groups(&pool, &mapping, period, None).await?.values().map(Vec::len).sum();

    // As the export jobs count: one site at a time.
    let t = Instant::now();
    let mut per_site_total = 0;
    for site in &export_sites {
        let values = aggregate::site_values(&pool, &mapping, site.id, period).await?;
        per_site_total += values.iter().filter(|v| v.data_element_code == "CONS_TOTAL").map(|v| v.value).sum::<u64>();
    }
    let per_site = t.elapsed();
    anyhow::ensure!(per_site_total == totals.0, "site by site {per_site_total} != all sites {}", totals.0);
    let late_sites = sites.min(10);
    let (late_same, late_changed) = late_data_check(&pool, &mapping, period, complete, patients, late_sites).await?;
    let (rss, hwm) = memory()?;

    println!();
    println!("{:<68} {:>10} {:>10}", "figure", "min", "median");
    let row = |what: &str, d: &mut Vec<Duration>| {
        d.sort();
        println!("{what:<68} {:>7.1} ms {:>7.1} ms", ms(d[0]), ms(d[d.len() / 2]));
    };
    row(&format!("all_site_values, {} sites (query + evaluate)", export_sites.len()), &mut whole);
    row(&format!("  grouped query alone (PostgreSQL + transfer, {group_rows} group rows)"), &mut query);
    row("  evaluate alone (Rust, every indicator of every site)", &mut evaluate);
    row(&format!("build_payload, {} sites ({} data values)", export_sites.len(), totals.1), &mut payloads);
    row(&format!("payloads to JSON ({:.1} MiB)", totals.2 as f64 / 1024.0 / 1024.0), &mut json);
    let mut sum: Vec<Duration> = (0..runs).map(|i| whole[i] + payloads[i]).collect();
    row("all_site_values + build_payload (export of every site)", &mut sum);
    println!(
        "{:<68} {:>7.1} ms",
        format!("site_values site by site, {} queries (once)", export_sites.len()),
        ms(per_site)
    );
    println!("{:<68} {:>7.1} ms", "late-data check, every site exported, nothing changed", ms(late_same));
    println!(
        "{:<68} {:>7.1} ms",
        format!("late-data check, {late_sites} sites with a late consultation"),
        ms(late_changed)
    );
    println!("{:<68} {:>10}", "consultations counted (CONS_TOTAL, all sites)", totals.0);
    println!("{:<68} {:>7.1} MiB", "process RSS after seeding", kib_to_mib(rss_before));
    println!("{:<68} {:>7.1} MiB", "process RSS at the end", kib_to_mib(rss));
    println!("{:<68} {:>7.1} MiB", "process peak RSS (VmHWM)", kib_to_mib(hwm));
    println!("{:<68} {:>7.1} s", "seeding", seeding.as_secs_f64());
    Ok(())
}

fn build_all(
    mapping: &Mapping,
    sites: &[ExportSite],
    period: Period,
    values: &[(santerurale_shared::SiteId, Vec<aggregate::IndicatorValue>)],
    complete: time::Date,
) -> anyhow::Result<Vec<DataValueSet>> {
    let by_id: std::collections::HashMap<_, _> = sites.iter().map(|s| (s.id, s)).collect();
    values
        .iter()
        .map(|(id, v)| {
            let site = by_id.get(id).context("site")?;
            Ok(aggregate::build_payload(mapping, site, period, v, complete)?)
        })
        .collect()
}

/// The daily late-data check over the period, every site's export recorded
/// as sent: its duration with nothing changed, then after 10 sites got one
/// late consultation each (each check is checked to find exactly those).
async fn late_data_check(
    pool: &deadpool_postgres::Pool,
    mapping: &Mapping,
    period: Period,
    complete: time::Date,
    patients: usize,
    late_sites: usize,
) -> anyhow::Result<(Duration, Duration)> {
    use hub::config::{Config, Dhis2Config};
    use hub::jobs::dhis2_late_data;

    hub::dhis2::mapping::save(pool, mapping, None).await.context("save the mapping")?;
    let sites = aggregate::export_sites(pool, None).await?;
    let values = aggregate::all_site_values(pool, mapping, period).await?;
    let sets = build_all(mapping, &sites, period, &values, complete)?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let insert = tx
        .prepare(
            "INSERT INTO dhis2_export_jobs (id, period, site_id, dry_run, status, trigger, attempts, payload,
                                            id_scheme, values_count, finished_at)
             VALUES ($1, $2, $3, false, 'succeeded', 'schedule', 1, $4::text::jsonb, 'uid', $5, now())",
        )
        .await?;
    for ((site, _), set) in values.iter().zip(&sets) {
        let count = i32::try_from(set.data_values.len())?;
        let payload = serde_json::to_string(set)?;
        tx.execute(&insert, &[&uuid::Uuid::now_v7(), &period.to_string(), site.as_uuid(), &payload, &count]).await?;
    }
    tx.commit().await?;
    drop(client);

    let config = Config { dhis2: Dhis2Config { late_data_periods: 1, ..Dhis2Config::default() }, ..Config::default() };
    let today = period.end() + time::Duration::days(15);
    let t = Instant::now();
    let found = dhis2_late_data::find(pool, &config, today).await?;
    let same = t.elapsed();
    anyhow::ensure!(found.is_empty(), "{} sites out of date before any change", found.len());

    // One late consultation at each of the first sites, by its first patient.
    pool.get()
        .await?
        .batch_execute(&format!(
            "INSERT INTO encounters (id, patient_id, site_id, device_id, date, kind, complaint, diagnosis, notes,
                                     clinician, age_group, recorded_at)
             SELECT md5('late' || s)::uuid, md5('patient' || ((s - 1) * {patients} + 1))::uuid, md5('site' || s)::uuid,
                    md5('device' || s)::uuid, date '2024-04-30', 'consultation', '', '', '', 'Dr Bench', 'adult', now()
             FROM generate_series(1, {late_sites}) s"
        ))
        .await
        .context("late consultations")?;
    let t = Instant::now();
    let found = dhis2_late_data::find(pool, &config, today).await?;
    let changed = t.elapsed();
    anyhow::ensure!(found.len() == late_sites, "{} sites out of date, {late_sites} expected", found.len());
    Ok((same, changed))
}

/// The shipped default with made-up uids, as after resolve-mapping.
fn resolved_default() -> Mapping {
    // One uid per code, as DHIS2 has them (the mapping refuses two).
    fn uid_of(prefix: &str, code: &str, known: &mut Vec<String>) -> Option<String> {
        let i = known.iter().position(|c| c == code).unwrap_or_else(|| {
            known.push(code.to_owned());
            known.len() - 1
        });
        Some(format!("{prefix}{i:04}"))
    }
    let mut m = Mapping::default_mapping();
    m.data_set.uid = Some("srMonthly01".into());
    let (mut elements, mut combos) = (Vec::new(), Vec::new());
    for ind in &mut m.indicators {
        ind.data_element.uid = uid_of("deBench", &ind.data_element.code, &mut elements);
        ind.category_option_combo.uid = uid_of("coBench", &ind.category_option_combo.code, &mut combos);
    }
    m
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// VmRSS and VmHWM of this process, in KiB.
fn memory() -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("{name} in /proc/self/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Synthetic data in the projection tables, deterministic (ids and values
/// derived from row numbers with md5 and hashtext).
async fn seed(pool: &deadpool_postgres::Pool, sites: usize, encounters: usize, patients: usize) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let (sites, encounters, patients) = (i32::try_from(sites)?, i32::try_from(encounters)?, i32::try_from(patients)?);
    let steps: [(&str, String); 6] = [
        (
            "sites",
            format!(
                "INSERT INTO sites (id, name, code, dhis2_org_unit, dhis2_org_unit_code)
                 SELECT md5('site' || s)::uuid, 'CSCom ' || s, 'S' || lpad(s::text, 5, '0'),
                        'ou' || lpad(s::text, 9, '0'), 'OU_' || s
                 FROM generate_series(1, {sites}) s"
            ),
        ),
        (
            "devices",
            format!(
                "INSERT INTO devices (id, site_id, public_key)
                 SELECT md5('device' || s)::uuid, md5('site' || s)::uuid,
                        decode(md5('key' || s) || md5('key2' || s), 'hex')
                 FROM generate_series(1, {sites}) s"
            ),
        ),
        (
            "documents",
            format!(
                "INSERT INTO documents (patient_id, doc)
                 SELECT md5('patient' || n)::uuid, '\\x'::bytea FROM generate_series(1, {sites} * {patients}) n"
            ),
        ),
        (
            "patients",
            // Site (n-1)/patients+1; ages 0 to 74; 10% registered in April 2024.
            format!(
                "INSERT INTO patients (id, site_id, given_name, family_name, sex, birth_date, birth_date_estimated,
                                       village, whatsapp_consent, created_at, updated_at, last_device_id, search)
                 SELECT md5('patient' || n)::uuid, md5('site' || s)::uuid, 'Bench', 'Patient',
                        CASE WHEN n % 2 = 0 THEN 'female' ELSE 'male' END,
                        date '2024-04-15' - ((hashtext('birth' || n)::bigint & 2147483647) % 27000)::int,
                        n % 7 = 0, 'Village', false,
                        CASE WHEN n % 10 = 0 THEN timestamptz '2024-04-01 00:00Z' + (n % 30) * interval '1 day'
                             ELSE timestamptz '2023-01-01 00:00Z' + (n % 400) * interval '1 day' END,
                        now(), md5('device' || s)::uuid, 'bench patient'
                 FROM (SELECT n, (n - 1) / {patients} + 1 AS s FROM generate_series(1, {sites} * {patients}) n) g"
            ),
        ),
        (
            "encounters",
            // Site s, its k-th encounter: a patient of the site, a day of
            // April, kinds 60% consultation, 10% follow-up, 15% antenatal,
            // 15% vaccination.
            format!(
                "INSERT INTO encounters (id, patient_id, site_id, device_id, date, kind, complaint, diagnosis, notes,
                                         clinician, age_group, recorded_at)
                 SELECT md5('encounter' || s || '-' || k)::uuid,
                        md5('patient' || ((s - 1) * {patients} + 1 + (hashtext('p' || s || '-' || k)::bigint & 2147483647) % {patients}))::uuid,
                        md5('site' || s)::uuid, md5('device' || s)::uuid,
                        date '2024-04-01' + (k % 30),
                        CASE WHEN k % 20 < 12 THEN 'consultation' WHEN k % 20 < 14 THEN 'follow_up'
                             WHEN k % 20 < 17 THEN 'antenatal' ELSE 'vaccination' END,
                        'fièvre', 'paludisme', '', 'Dr Bench', 'adult',
                        timestamptz '2024-04-01 18:00Z' + (k % 35) * interval '1 day'
                 FROM generate_series(1, {sites}) s, generate_series(1, {encounters}) k"
            ),
        ),
        ("analyze", "ANALYZE".to_owned()),
    ];
    for (what, sql) in steps {
        let t = Instant::now();
        client.batch_execute(&sql).await.with_context(|| format!("seeding {what}"))?;
        println!("  {what:<12} {:>8.1} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
