//! The link simulator itself, against tiny loopback servers (an echo and a
//! sink that reports how many bytes reached it): bytes are counted, latency
//! and throttling are really applied (lower bounds derived from the profile,
//! never timed upper bounds), drops happen at the seeded points and repeat
//! with the seed, and cut/heal and the periodic cut schedule work.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use santerurale_e2e::{LinkProfile, LinkSimulator, PeriodicCuts, poll_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Guards against a hang only; no assertion is about speed.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// An echo server on a loopback port.
async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A server that reads each connection to its end and reports the byte count.
async fn sink_server() -> anyhow::Result<(SocketAddr, mpsc::UnboundedReceiver<u64>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut total = 0u64;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = tx.send(total);
            });
        }
    });
    Ok((addr, rx))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect()
}

/// Writes `data`, half-closes, and reads until the other side closes; the
/// bytes read (an error after some bytes counts as the end).
async fn exchange(addr: SocketAddr, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut r, mut w) = stream.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        // A dropped link may refuse the rest of the write: that is the point.
        if w.write_all(&data).await.is_ok() {
            let _ = w.shutdown().await;
        }
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    tokio::time::timeout(HANG_GUARD, async {
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .context("the exchange hung")?;
    writer.await?;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_link_forwards_and_counts_every_byte() -> anyhow::Result<()> {
    let echo = echo_server().await?;
    let link = LinkSimulator::start(echo, LinkProfile::clean(), 1).await?;
    let data = pattern(300_000);
    let got = exchange(link.addr(), &data).await?;
    ensure!(got == data, "the echo through the link differs: {} bytes back of {}", got.len(), data.len());
    let stats = poll_until("the counters to settle", HANG_GUARD, || {
        let stats = link.stats();
        async move { Ok((stats.bytes_down == 300_000).then_some(stats)) }
    })
    .await?;
    ensure!(stats.bytes_up == 300_000 && stats.connections == 1 && stats.faults() == 0, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_bandwidth_are_applied() -> anyhow::Result<()> {
    let echo = echo_server().await?;
    // Latency: a one-byte round trip crosses the link twice.
    let latency = Duration::from_millis(150);
    let link = LinkSimulator::start(echo, LinkProfile { latency, ..LinkProfile::clean() }, 2).await?;
    let started = Instant::now();
    let got = exchange(link.addr(), b"x").await?;
    let round_trip = started.elapsed();
    ensure!(got == b"x", "echo through a slow link: {got:?}");
    ensure!(round_trip >= 2 * latency, "a round trip took {round_trip:?}, less than twice the latency {latency:?}");

    // Bandwidth: 8 KiB up at 32 kbit/s cannot take less than 2.048 s.
    let rate = 32_000;
    let profile = LinkProfile { up_bits_per_sec: Some(rate), ..LinkProfile::clean() };
    let link = LinkSimulator::start(echo, profile, 3).await?;
    let data = pattern(8192);
    let started = Instant::now();
    let got = exchange(link.addr(), &data).await?;
    let took = started.elapsed();
    let floor = Duration::from_secs_f64(data.len() as f64 * 8.0 / rate as f64);
    ensure!(got == data, "throttled echo differs");
    ensure!(took >= floor, "8 KiB at {rate} bit/s took {took:?}, less than the {floor:?} the rate allows");
    println!(
        "link: round trip {round_trip:?} with {latency:?} one way; 8 KiB at 32 kbit/s in {took:?} (floor {floor:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_happen_at_the_seeded_points() -> anyhow::Result<()> {
    let window = 10_000;
    let data = pattern(30_000);

    // Mid-request: the sink receives exactly the drawn number of bytes, the
    // same for the same seed, and the client is cut off.
    let (sink, mut received) = sink_server().await?;
    let profile = LinkProfile::clean().with_drops(1.0, 0.0, window);
    let mut points = Vec::new();
    for seed in [11, 11, 12, 13, 14] {
        let link = LinkSimulator::start(sink, profile, seed).await?;
        exchange(link.addr(), &data).await?;
        let at = tokio::time::timeout(HANG_GUARD, received.recv()).await?.context("sink gone")?;
        let stats = link.stats();
        ensure!(stats.dropped_mid_request == 1 && stats.dropped_mid_response == 0, "seed {seed}: {stats:?}");
        ensure!((1..=window).contains(&at), "seed {seed}: dropped after {at} bytes, outside 1..={window}");
        ensure!(stats.bytes_up == at, "seed {seed}: the sink got {at} bytes, the link counted {}", stats.bytes_up);
        points.push(at);
    }
    ensure!(points[0] == points[1], "the same seed dropped at {} then {} bytes", points[0], points[1]);
    ensure!(points[1..].windows(2).any(|w| w[0] != w[1]), "four seeds all dropped at the same point: {points:?}");

    // Mid-response: the client gets exactly the drawn number of bytes back.
    let echo = echo_server().await?;
    let profile = LinkProfile::clean().with_drops(0.0, 1.0, window);
    let mut back = Vec::new();
    for seed in [21, 21] {
        let link = LinkSimulator::start(echo, profile, seed).await?;
        let got = exchange(link.addr(), &data).await?;
        let stats = link.stats();
        ensure!(stats.dropped_mid_response == 1 && stats.dropped_mid_request == 0, "seed {seed}: {stats:?}");
        ensure!(
            got.len() as u64 == stats.bytes_down,
            "seed {seed}: got {} bytes, counted {}",
            got.len(),
            stats.bytes_down
        );
        ensure!((1..=window).contains(&stats.bytes_down), "seed {seed}: {stats:?}");
        ensure!(got[..] == data[..got.len()], "seed {seed}: the bytes before the drop are not the echo");
        back.push(got.len());
    }
    ensure!(back[0] == back[1], "the same seed cut the response at {} then {} bytes", back[0], back[1]);
    println!("link drops: mid-request points {points:?}, mid-response point {}", back[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_closes_and_refuses_until_heal() -> anyhow::Result<()> {
    let echo = echo_server().await?;
    let link = LinkSimulator::start(echo, LinkProfile::clean(), 4).await?;

    // An open connection works, then dies with the cut.
    let mut open = TcpStream::connect(link.addr()).await?;
    open.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(HANG_GUARD, open.read_exact(&mut buf)).await??;
    ensure!(&buf == b"ping", "echo before the cut: {buf:?}");
    link.cut();
    ensure!(link.is_cut(), "cut() did not cut");
    let after = tokio::time::timeout(HANG_GUARD, open.read(&mut buf)).await?;
    ensure!(matches!(after, Ok(0) | Err(_)), "an open connection survived the cut: {after:?}");

    // New connections are closed at once, not left hanging.
    let got = exchange(link.addr(), b"hello").await?;
    ensure!(got.is_empty(), "a connection through a cut link answered {got:?}");
    let stats = link.stats();
    ensure!(stats.closed_by_cut == 1 && stats.refused >= 1 && stats.cuts == 1, "{stats:?}");

    link.heal();
    let got = exchange(link.addr(), b"hello").await?;
    ensure!(got == b"hello", "after heal: {got:?}");

    // The seeded schedule cuts the link by itself, again and again.
    let cuts = PeriodicCuts {
        up: (Duration::from_millis(20), Duration::from_millis(60)),
        down: (Duration::from_millis(20), Duration::from_millis(60)),
    };
    link.set_profile(LinkProfile::clean().with_cuts(cuts));
    poll_until("three scheduled cuts", HANG_GUARD, || {
        let n = link.stats().cuts;
        async move { Ok((n >= 4).then_some(())) }
    })
    .await?;
    link.set_profile(LinkProfile::clean());
    link.heal();
    // A scheduled outage that had already begun ends on its own.
    let addr = link.addr();
    poll_until("the link to carry traffic once the schedule stopped", HANG_GUARD, || async move {
        Ok((exchange(addr, b"again").await? == b"again").then_some(()))
    })
    .await?;
    Ok(())
}
