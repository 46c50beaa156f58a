//! Convergence as a property: for several seeds, a random sequence of
//! operations on the two edges of one site (register, encounter, edit, sync,
//! cut or heal a link, change a link's profile, SIGKILL and restart an edge
//! server, sometimes while it runs a sync) over random faulty links; then
//! the links heal, the site syncs until quiet, and the invariants of
//! `convergence.rs` must hold (each change on the hub exactly once,
//! identical documents and projections, no encounter lost).
//!
//! Cases: `SANTERURALE_CONVERGENCE_CASES` (default 4) seeds drawn from the
//! printed master seed, `SANTERURALE_CONVERGENCE_SEED` replays a master seed,
//! `SANTERURALE_CONVERGENCE_OPS` the operations per case (default 60). A
//! failing case prints its seed and its operation list.

mod site;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::{Method, StatusCode};
use santerurale_e2e::seed_from_env;
use site::{Site, faulty_profile};

const DEFAULT_CASES: u64 = 4;
const DEFAULT_OPS: usize = 60;

fn env_number<T: std::str::FromStr>(var: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(var) {
        Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{var}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_over_random_faults_converge() -> anyhow::Result<()> {
    let master = seed_from_env("SANTERURALE_CONVERGENCE_SEED")?;
    let cases = env_number("SANTERURALE_CONVERGENCE_CASES", DEFAULT_CASES)?;
    let ops = env_number("SANTERURALE_CONVERGENCE_OPS", DEFAULT_OPS)?;
    let mut seeds = StdRng::seed_from_u64(master);
    let mut faults = 0;
    for case in 1..=cases {
        let seed: u64 = seeds.random();
        let started = Instant::now();
        let mut done = Vec::new();
        let outcome = run_case(seed, ops, &mut done).await;
        let listed = done.iter().enumerate().map(|(i, op)| format!("  {i:3}. {op}")).collect::<Vec<_>>().join("\n");
        let (summary, case_faults) = outcome.with_context(|| {
            format!(
                "case {case} failed: seed {seed} (master seed {master}: SANTERURALE_CONVERGENCE_SEED={master}); \
                 operations:\n{listed}"
            )
        })?;
        println!("case {case} (seed {seed}, {:.1} s): {summary}", started.elapsed().as_secs_f64());
        faults += case_faults;
    }
    // Faults are random per case; over all cases some must have fired, or
    // this run proved nothing about failing links.
    ensure!(faults > 0, "no link fault fired in {cases} cases (master seed {master})");
    Ok(())
}

/// One case; `done` lists the operations as they happen (for the report).
async fn run_case(seed: u64, ops: usize, done: &mut Vec<String>) -> anyhow::Result<(String, u64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut site = Site::start(seed).await?;
    for edge in 0..2 {
        let profile = faulty_profile(&mut rng);
        done.push(format!("edge {edge}: link profile {profile:?}"));
        site.edges[edge].link.set_profile(profile);
    }
    let (mut synced, mut failed, mut restarts) = (0, 0, 0);
    for _ in 0..ops {
        let edge = rng.random_range(0..2);
        let roll = rng.random_range(0..100);
        let pick = |rng: &mut StdRng, site: &Site| {
            (!site.patients.is_empty()).then(|| site.patients[rng.random_range(0..site.patients.len())].id.clone())
        };
        match roll {
            0..25 => {
                let id = site.register(edge, &mut rng).await?;
                done.push(format!("edge {edge}: register {id}"));
            }
            25..45 => {
                let Some(id) = pick(&mut rng, &site) else { continue };
                if site.edges[edge].has_patient(&id).await? {
                    site.encounter(edge, &id, &mut rng).await?;
                    done.push(format!("edge {edge}: encounter for {id}"));
                }
            }
            45..65 => {
                let Some(id) = pick(&mut rng, &site) else { continue };
                let patch = match rng.random_range(0..3) {
                    0 => serde_json::json!({ "village": format!("Village {}", rng.random_range(0..5)) }),
                    1 => serde_json::json!({ "national_id": format!("NI-{}", rng.random_range(0..100)) }),
                    _ => serde_json::json!({ "phone": format!("+2237{:07}", rng.random_range(0..10_000_000)) }),
                };
                if site.edges[edge].has_patient(&id).await? {
                    site.edit(edge, &id, &patch).await?;
                    done.push(format!("edge {edge}: edit {id} {patch}"));
                }
            }
            65..87 => {
                let report = site.sync(edge).await?;
                if report.is_some() {
                    synced += 1;
                } else {
                    failed += 1;
                }
                done.push(format!("edge {edge}: sync -> {}", report.map_or("failed".to_owned(), |r| r.to_string())));
            }
            87..91 => {
                site.edges[edge].link.cut();
                done.push(format!("edge {edge}: cut the link"));
            }
            91..95 => {
                site.edges[edge].link.heal();
                done.push(format!("edge {edge}: heal the link"));
            }
            95..97 => {
                let profile = faulty_profile(&mut rng);
                done.push(format!("edge {edge}: link profile {profile:?}"));
                site.edges[edge].link.set_profile(profile);
            }
            _ => {
                // Half the time with a sync run in flight, killed at a seeded
                // moment (a random kill point, not a synchronisation).
                let in_flight = rng.random_bool(0.5).then(|| {
                    let api = site.edges[edge].api.clone();
                    tokio::spawn(async move { api.call(Method::POST, "/api/v1/sync/run", None, StatusCode::OK).await })
                });
                let delay = Duration::from_millis(rng.random_range(0..300));
                if in_flight.is_some() {
                    tokio::time::sleep(delay).await;
                }
                site.edges[edge].restart().await?;
                restarts += 1;
                let outcome = match in_flight {
                    Some(call) => match call.await? {
                        Ok(_) => format!(" (its sync had finished within {} ms)", delay.as_millis()),
                        Err(e) => format!(" (a sync in flight for {} ms: {e})", delay.as_millis()),
                    },
                    None => String::new(),
                };
                done.push(format!("edge {edge}: SIGKILL and restart the server{outcome}"));
            }
        }
    }
    done.push("heal both links and sync until quiet".to_owned());
    let rounds = site.converge().await?;
    let summary = site.check_converged().await?;
    let faults: Vec<u64> = site.edges.iter().map(|e| e.link.stats().faults()).collect();
    let summary = format!(
        "{summary}; {synced} syncs ok and {failed} failed during the run, {restarts} edge restarts, \
         link faults {faults:?}, quiet after {rounds} rounds"
    );
    Ok((summary, faults.iter().sum()))
}
