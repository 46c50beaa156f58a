//! Two edges of one site and a hub converge over failing links.
//!
//! Each edge reaches the hub through its own [`LinkSimulator`] (latency,
//! throttling, connections dropped mid-request and mid-response, seeded
//! outages). The edges register patients, record encounters and edit
//! demographics through their API while syncing (`POST /api/v1/sync/run`)
//! over those links; syncs fail often, and that is the point. Some edits
//! are concurrent on purpose: both edges change the same field of the same
//! patient, or add encounters to it, between two syncs. Then the links heal
//! and both edges sync until a whole round moves nothing, and
//! [`check_converged`] asserts:
//!
//! - exactly once: the hub's change log is the union of both outboxes, each
//!   hash once, with the device that made it; every outbox row is acknowledged;
//! - the same documents: for every patient, both edges' documents (SQLite)
//!   and the hub's (PostgreSQL) have the same heads and the same change set,
//!   and no edge stores a change twice;
//! - the same projections: `GET /api/v1/patients/{id}` answers the same JSON
//!   on both edges and on the hub, and every encounter recorded survives;
//! - the hub lists a conflict for each concurrent same-field edit (here, in
//!   the scripted scenario; the property test in `convergence_property.rs`
//!   drives the same [`Site`] with random operations).
//!
//! Seeds: `SANTERURALE_CONVERGENCE_SEED` replays the operations, and each
//! link's faults derive from it.

mod site;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use reqwest::{Method, StatusCode};
use santerurale_e2e::seed_from_env;
use site::{Site, faulty_profile};

/// Scripted rounds of writes and syncs over failing links.
const ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_and_the_hub_converge_over_failing_links() -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = seed_from_env("SANTERURALE_CONVERGENCE_SEED")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut site = Site::start(seed).await?;

    // A shared start: patients from both edges that both then hold.
    for edge in 0..2 {
        for _ in 0..3 {
            site.register(edge, &mut rng).await?;
        }
    }
    site.converge().await.context("the first clean exchange")?;
    let shared: Vec<String> = site.patients.iter().map(|p| p.id.clone()).collect();
    for edge in 0..2 {
        for id in &shared {
            ensure!(site.edges[edge].has_patient(id).await?, "edge {edge} lacks patient {id} after a clean exchange");
        }
    }

    // Concurrent same-field edits: each edge writes its own value into the
    // village and the phone of three shared patients before either syncs,
    // and both add an encounter to them.
    for (i, id) in shared.iter().take(3).enumerate() {
        for edge in 0..2 {
            let village = format!("Village {i} vu par {edge}");
            site.edit(edge, id, &serde_json::json!({ "village": village })).await?;
            site.edit(edge, id, &serde_json::json!({ "phone": format!("+2237{edge}{i:06}") })).await?;
            site.encounter(edge, id, &mut rng).await?;
        }
    }

    // Rounds of work and syncs while the links fail.
    for edge in 0..2 {
        site.edges[edge].link.set_profile(faulty_profile(&mut rng));
    }
    let (mut ok, mut failed) = (0, 0);
    for round in 1..=ROUNDS {
        for edge in 0..2 {
            for _ in 0..rng.random_range(3..7) {
                let id = site.register(edge, &mut rng).await?;
                site.encounter(edge, &id, &mut rng).await?;
            }
            // Edits of other fields, on any patient this edge holds.
            for _ in 0..3 {
                let id = site.patients[rng.random_range(0..site.patients.len())].id.clone();
                if site.edges[edge].has_patient(&id).await? && !shared[..3].contains(&id) {
                    let patch = serde_json::json!({ "national_id": format!("NI-{round}-{edge}-{}", rng.random_range(0..1000)) });
                    site.edit(edge, &id, &patch).await?;
                }
            }
        }
        for _ in 0..3 {
            for edge in 0..2 {
                if site.sync(edge).await?.is_some() {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
        }
    }

    let rounds = site.converge().await.context("converging after the links healed")?;
    let summary = site.check_converged().await?;

    // The concurrent same-field edits are conflicts on the hub.
    let listed = site.hub_api.call(Method::GET, "/api/v1/conflicts?status=all", None, StatusCode::OK).await?;
    let conflicts: BTreeMap<(String, String), String> = listed["conflicts"]
        .as_array()
        .context("no conflicts array")?
        .iter()
        .filter_map(|c| {
            let key = (c["patient_id"].as_str()?.to_owned(), c["field"].as_str()?.to_owned());
            Some((key, c["values"].to_string()))
        })
        .collect();
    for (i, id) in shared.iter().take(3).enumerate() {
        for field in ["village", "phone"] {
            let values = conflicts
                .get(&(id.clone(), field.to_owned()))
                .with_context(|| format!("the hub lists no {field} conflict for {id}; it lists {conflicts:?}"))?;
            // Both edges' values compete.
            let wanted: Vec<String> = (0..2)
                .map(|edge| match field {
                    "village" => format!("Village {i} vu par {edge}"),
                    _ => format!("+2237{edge}{i:06}"),
                })
                .collect();
            ensure!(
                wanted.iter().all(|w| values.contains(w.as_str())),
                "the {field} conflict of {id} lists {values}, not both of {wanted:?}"
            );
        }
    }

    let stats: Vec<_> = site.edges.iter().map(|e| e.link.stats()).collect();
    for (edge, s) in stats.iter().enumerate() {
        ensure!(
            s.dropped_mid_request + s.dropped_mid_response > 0 && s.faults() > 0,
            "edge {edge}'s link broke nothing, so this run proves nothing: {s:?}"
        );
    }
    ensure!(failed > 0, "no sync failed while the links were faulty");
    println!(
        "convergence (seed {seed}): {summary}; {ok} syncs succeeded and {failed} failed over faulty links; \
         converged in {rounds} clean rounds; {} conflicts listed (6 expected); links: {stats:?}; {:.1} s",
        conflicts.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
