//! A seeded link simulator: a TCP proxy on loopback between an edge and the
//! hub that behaves like a rural 2G link (this machine kind has no `netem`).
//!
//! [`LinkSimulator::start`] listens on `127.0.0.1:0` and forwards every
//! connection it accepts to `upstream`. Each direction of a connection is a
//! pipe of two halves: a reader that takes bytes off one socket and stamps
//! them with the time they may be delivered, and a writer that waits for that
//! moment and writes them to the other socket. With a [`LinkProfile`]:
//!
//! - **Latency**: every chunk is delivered `latency` after it left (one way;
//!   a round trip costs twice that).
//! - **Bandwidth**: a direction with a rate sends one chunk at a time: a chunk
//!   of `n` bytes leaves `n * 8 / rate` seconds after the previous one left
//!   (or after it was read, if the link was idle). Chunks are at most
//!   [`PACE_CHUNK`] bytes, so pacing is smooth. A transfer of `N` bytes can
//!   therefore never complete in less than `N * 8 / rate`.
//! - **Drops**: when a connection is accepted, its own RNG decides whether
//!   it will be dropped mid-request (after a drawn number of client-to-hub
//!   bytes, in `1..=drop_window`) and mid-response (after a drawn number of
//!   hub-to-client bytes). The bytes before the point are delivered, then
//!   both sockets are closed: the hub sees a truncated request, the edge a
//!   truncated answer. A drop point past the end of the traffic never fires;
//!   the counters say which fired.
//! - **Cuts**: [`LinkSimulator::cut`] closes every open connection and closes
//!   every new one at once (a refused connection, not a blackhole: the edge's
//!   HTTP client waits up to minutes on a silent socket, and a test must not),
//!   until [`LinkSimulator::heal`]. A profile with [`PeriodicCuts`] does the
//!   same on a seeded schedule.
//!
//! All randomness comes from one ChaCha8 stream seeded with the `seed` given
//! to `start`: connection `n` (in accept order) always gets the same drop
//! points, and the cut schedule is the same sequence of durations. Whether a
//! run replays exactly also depends on the clients opening the same
//! connections in the same order, which HTTP keep-alive mostly ensures.
//! [`link_seed`] reads `SANTERURALE_LINK_SEED` to replay a printed seed.
//!
//! A new profile ([`LinkSimulator::set_profile`]) applies to connections
//! accepted afterwards; open ones keep the one they started with.
//! [`LinkStats`] counts what really happened, so a test can prove that its
//! faults fired.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest chunk a throttled direction sends at once.
pub const PACE_CHUNK: usize = 512;
/// Bytes a direction may hold between its reader and writer: enough to fill
/// a 1 Mbit/s link with a second of latency, small enough that a slow link
/// pushes back on the sender like a real one.
const IN_FLIGHT_BYTES: usize = 128 * 1024;
const READ_BUFFER: usize = 16 * 1024;

/// A seeded schedule of link outages: up for a duration drawn in `up`, then
/// cut for one drawn in `down`, and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodicCuts {
    pub up: (Duration, Duration),
    pub down: (Duration, Duration),
}

/// How the link behaves. [`LinkProfile::default`] is a clean link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// One-way delay added to every chunk, each direction.
    pub latency: Duration,
    /// Client-to-upstream rate in bits per second; `None` is unthrottled.
    pub up_bits_per_sec: Option<u64>,
    /// Upstream-to-client rate in bits per second; `None` is unthrottled.
    pub down_bits_per_sec: Option<u64>,
    /// Chance that a connection is dropped after a drawn number of client bytes.
    pub drop_request: f64,
    /// Chance that a connection is dropped after a drawn number of upstream bytes.
    pub drop_response: f64,
    /// Drop points are drawn uniformly in `1..=drop_window` bytes.
    pub drop_window: u64,
    /// Seeded outages, if any.
    pub cuts: Option<PeriodicCuts>,
}

impl Default for LinkProfile {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            up_bits_per_sec: None,
            down_bits_per_sec: None,
            drop_request: 0.0,
            drop_response: 0.0,
            drop_window: 4096,
            cuts: None,
        }
    }
}

impl LinkProfile {
    /// A clean link.
    #[must_use]
    pub fn clean() -> Self {
        Self::default()
    }

    /// `bits_per_sec` both ways and `round_trip / 2` latency each way (the
    /// benchmarks' "64 kbit/s with 700 ms round trips").
    #[must_use]
    pub fn throttled(bits_per_sec: u64, round_trip: Duration) -> Self {
        Self {
            latency: round_trip / 2,
            up_bits_per_sec: Some(bits_per_sec),
            down_bits_per_sec: Some(bits_per_sec),
            ..Self::default()
        }
    }

    /// Drops: each connection with these chances, at points within `window` bytes.
    #[must_use]
    pub fn with_drops(mut self, request: f64, response: f64, window: u64) -> Self {
        self.drop_request = request;
        self.drop_response = response;
        self.drop_window = window.max(1);
        self
    }

    #[must_use]
    pub fn with_cuts(mut self, cuts: PeriodicCuts) -> Self {
        self.cuts = Some(cuts);
        self
    }
}

/// What the simulator did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes delivered to upstream (client to hub).
    pub bytes_up: u64,
    /// Bytes delivered to clients (hub to client).
    pub bytes_down: u64,
    /// Connections accepted and forwarded.
    pub connections: u64,
    /// Connections closed at once because the link was cut.
    pub refused: u64,
    /// Connections dropped at their seeded point in the request direction.
    pub dropped_mid_request: u64,
    /// Connections dropped at their seeded point in the response direction.
    pub dropped_mid_response: u64,
    /// Open connections closed by a cut.
    pub closed_by_cut: u64,
    /// Times the link went down (manual or scheduled).
    pub cuts: u64,
}

impl LinkStats {
    /// Every connection the simulator broke, whatever the way.
    #[must_use]
    pub fn faults(&self) -> u64 {
        self.refused + self.dropped_mid_request + self.dropped_mid_response + self.closed_by_cut
    }
}

#[derive(Debug, Default)]
struct Counters {
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicU64,
    refused: AtomicU64,
    dropped_mid_request: AtomicU64,
    dropped_mid_response: AtomicU64,
    closed_by_cut: AtomicU64,
    cuts: AtomicU64,
}

#[derive(Debug)]
struct LinkState {
    profile: LinkProfile,
    manual_cut: bool,
    scheduled_cut: bool,
    rng: ChaCha8Rng,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    state: Mutex<LinkState>,
    counters: Counters,
    /// Bumped by every cut: open connections close when it moves.
    generation: watch::Sender<u64>,
    /// Bumped by `set_profile`, to wake the cut schedule.
    profile_changed: watch::Sender<u64>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cut(&self) -> bool {
        let s = self.state();
        s.manual_cut || s.scheduled_cut
    }

    /// Marks the link down (`manual` or scheduled) and closes what is open.
    fn go_down(&self, manual: bool) {
        {
            let mut s = self.state();
            if !(s.manual_cut || s.scheduled_cut) {
                self.counters.cuts.fetch_add(1, Ordering::Relaxed);
            }
            if manual {
                s.manual_cut = true;
            } else {
                s.scheduled_cut = true;
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }
}

/// A running simulator; stops (and closes every connection) when dropped.
#[derive(Debug)]
pub struct LinkSimulator {
    addr: SocketAddr,
    seed: u64,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl LinkSimulator {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` under `profile`,
    /// every random choice drawn from `seed`.
    pub async fn start(upstream: SocketAddr, profile: LinkProfile, seed: u64) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("the link simulator cannot bind a port")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(LinkState {
                profile,
                manual_cut: false,
                scheduled_cut: false,
                rng: ChaCha8Rng::seed_from_u64(seed),
            }),
            counters: Counters::default(),
            generation: watch::Sender::new(0),
            profile_changed: watch::Sender::new(0),
        });
        // The cut schedule has its own stream, so connections do not shift it.
        let schedule_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c075);
        // Printed so that a failure names the seed that replays its faults.
        println!("link simulator {addr} -> {upstream}: seed {seed}, {profile:?}");
        let tasks = vec![
            tokio::spawn(accept_loop(listener, Arc::clone(&shared))),
            tokio::spawn(cut_schedule(Arc::clone(&shared), schedule_rng)),
        ];
        Ok(Self { addr, seed, shared, tasks })
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the URL to give a client (`edge enroll --hub`).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    #[must_use]
    pub fn profile(&self) -> LinkProfile {
        self.shared.state().profile
    }

    /// Applies to connections accepted from now on (and to the cut schedule).
    pub fn set_profile(&self, profile: LinkProfile) {
        self.shared.state().profile = profile;
        self.shared.profile_changed.send_modify(|g| *g += 1);
    }

    /// Closes every open connection and every new one until [`Self::heal`].
    pub fn cut(&self) {
        self.shared.go_down(true);
    }

    /// Ends a manual cut and a scheduled one in progress.
    pub fn heal(&self) {
        let mut s = self.shared.state();
        s.manual_cut = false;
        s.scheduled_cut = false;
    }

    #[must_use]
    pub fn is_cut(&self) -> bool {
        self.shared.is_cut()
    }

    #[must_use]
    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            connections: get(&c.connections),
            refused: get(&c.refused),
            dropped_mid_request: get(&c.dropped_mid_request),
            dropped_mid_response: get(&c.dropped_mid_response),
            closed_by_cut: get(&c.closed_by_cut),
            cuts: get(&c.cuts),
        }
    }
}

impl Drop for LinkSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Open connections watch the generation: close them too.
        self.shared.state().manual_cut = true;
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

/// The seed for a link simulator: `SANTERURALE_LINK_SEED` if set (to replay
/// a failure), else a fresh one. Printed either way.
pub fn link_seed() -> anyhow::Result<u64> {
    crate::seed_from_env("SANTERURALE_LINK_SEED")
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Watching before the check: a cut right after it still closes this one.
        let generation = shared.generation.subscribe();
        if shared.is_cut() {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        // Drawn here, in accept order, so connection n always gets the same plan.
        let plan = {
            let mut s = shared.state();
            let profile = s.profile;
            let window = profile.drop_window.max(1);
            let request = s.rng.random_bool(profile.drop_request.clamp(0.0, 1.0));
            let request_at = s.rng.random_range(1..=window);
            let response = s.rng.random_bool(profile.drop_response.clamp(0.0, 1.0));
            let response_at = s.rng.random_range(1..=window);
            ConnectionPlan {
                profile,
                drop_request_at: request.then_some(request_at),
                drop_response_at: response.then_some(response_at),
            }
        };
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, plan, generation, Arc::clone(&shared)));
    }
}

/// What one connection will suffer, decided when it is accepted.
#[derive(Debug, Clone, Copy)]
struct ConnectionPlan {
    profile: LinkProfile,
    drop_request_at: Option<u64>,
    drop_response_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// How a pipe or a connection ended early.
#[derive(Debug)]
enum Broken {
    /// A seeded drop point was reached (and counted).
    Dropped,
    /// A socket failed (the peer reset it): the connection is over.
    Io,
}

async fn connection(
    client: TcpStream,
    plan: ConnectionPlan,
    mut generation: watch::Receiver<u64>,
    shared: Arc<Shared>,
) {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        // Upstream down (a hub being restarted): the client sees its connection close.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let p = plan.profile;
    let up =
        pipe(client_read, upstream_write, p.latency, p.up_bits_per_sec, plan.drop_request_at, Direction::Up, &shared);
    let down = pipe(
        upstream_read,
        client_write,
        p.latency,
        p.down_bits_per_sec,
        plan.drop_response_at,
        Direction::Down,
        &shared,
    );
    // Counters are bumped before the sockets close (inside the futures, not
    // in select's handlers, which run after the halves are dropped), so a
    // client that sees its connection end also sees it counted.
    let cut = async {
        let _ = generation.changed().await;
        shared.counters.closed_by_cut.fetch_add(1, Ordering::Relaxed);
    };
    tokio::select! {
        _ = async { tokio::try_join!(up, down) } => {}
        () = cut => {}
    }
    // Leaving drops every half: both sockets close.
}

/// A chunk in flight, or the end of the direction.
#[derive(Debug)]
enum Segment {
    Data {
        bytes: Vec<u8>,
        deliver_at: Instant,
    },
    /// The source closed: shut the destination's write side down.
    Eof {
        deliver_at: Instant,
    },
    /// The drop point: break the connection once what came before is delivered.
    Drop {
        deliver_at: Instant,
    },
}

/// One direction: `from` to `to`, delayed, paced, and maybe dropped after
/// `drop_at` bytes. Ends `Ok` when the source closed and all was delivered.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    latency: Duration,
    bits_per_sec: Option<u64>,
    drop_at: Option<u64>,
    direction: Direction,
    shared: &Shared,
) -> Result<(), Broken> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Segment>();
    let room = Semaphore::new(IN_FLIGHT_BYTES);
    let delivered = match direction {
        Direction::Up => &shared.counters.bytes_up,
        Direction::Down => &shared.counters.bytes_down,
    };
    let reader = async {
        let mut buf = vec![0u8; READ_BUFFER];
        let mut read_total: u64 = 0;
        // When the link is next free to start sending a chunk.
        let mut link_free = Instant::now();
        loop {
            let n = from.read(&mut buf).await.map_err(|_| Broken::Io)?;
            let now = Instant::now();
            if n == 0 {
                let _ = tx.send(Segment::Eof { deliver_at: link_free.max(now) + latency });
                return Ok::<(), Broken>(());
            }
            let mut data = &buf[..n];
            let mut dropping = false;
            if let Some(at) = drop_at {
                let left = at.saturating_sub(read_total);
                if (n as u64) >= left {
                    data = &data[..usize::try_from(left).unwrap_or(n)];
                    dropping = true;
                }
            }
            read_total += data.len() as u64;
            let chunk = if bits_per_sec.is_some() { PACE_CHUNK } else { data.len().max(1) };
            for piece in data.chunks(chunk) {
                let permits = u32::try_from(piece.len()).unwrap_or(u32::MAX);
                room.acquire_many(permits).await.map_err(|_| Broken::Io)?.forget();
                let start = link_free.max(Instant::now());
                let departs = match bits_per_sec {
                    Some(rate) => start + transmission_time(piece.len(), rate),
                    None => start,
                };
                link_free = departs;
                tx.send(Segment::Data { bytes: piece.to_vec(), deliver_at: departs + latency })
                    .map_err(|_| Broken::Io)?;
            }
            if dropping {
                let _ = tx.send(Segment::Drop { deliver_at: link_free.max(Instant::now()) + latency });
                return Ok(());
            }
        }
    };
    let writer = async {
        while let Some(segment) = rx.recv().await {
            match segment {
                Segment::Data { bytes, deliver_at } => {
                    tokio::time::sleep_until(deliver_at).await;
                    to.write_all(&bytes).await.map_err(|_| Broken::Io)?;
                    delivered.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    room.add_permits(bytes.len());
                }
                Segment::Eof { deliver_at } => {
                    tokio::time::sleep_until(deliver_at).await;
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Segment::Drop { deliver_at } => {
                    tokio::time::sleep_until(deliver_at).await;
                    let _ = to.flush().await;
                    let counter = match direction {
                        Direction::Up => &shared.counters.dropped_mid_request,
                        Direction::Down => &shared.counters.dropped_mid_response,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Err(Broken::Dropped);
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// How long `bytes` take at `bits_per_sec`, rounded up to the microsecond.
fn transmission_time(bytes: usize, bits_per_sec: u64) -> Duration {
    let bits = (bytes as u64) * 8;
    let micros = (bits * 1_000_000).div_ceil(bits_per_sec.max(1));
    Duration::from_micros(micros)
}

/// Runs the profile's outage schedule for as long as the simulator lives.
async fn cut_schedule(shared: Arc<Shared>, mut rng: ChaCha8Rng) {
    let mut changed = shared.profile_changed.subscribe();
    loop {
        let cuts = shared.state().profile.cuts;
        let Some(cuts) = cuts else {
            if changed.changed().await.is_err() {
                return;
            }
            continue;
        };
        let up = draw(&mut rng, cuts.up);
        let down = draw(&mut rng, cuts.down);
        tokio::select! {
            () = tokio::time::sleep(up) => {}
            changed = changed.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        if shared.state().profile.cuts.is_none() {
            continue;
        }
        shared.go_down(false);
        tokio::time::sleep(down).await;
        shared.state().scheduled_cut = false;
    }
}

fn draw(rng: &mut ChaCha8Rng, (low, high): (Duration, Duration)) -> Duration {
    if high <= low {
        return low;
    }
    let micros = rng.random_range(low.as_micros()..=high.as_micros());
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmission_time_follows_the_rate() {
        assert_eq!(transmission_time(1000, 8000), Duration::from_secs(1));
        assert_eq!(transmission_time(512, 64_000), Duration::from_micros(64_000));
        assert_eq!(transmission_time(1, 3), Duration::from_micros(2_666_667));
    }

    #[test]
    fn draws_stay_in_range_and_repeat_with_the_seed() {
        let range = (Duration::from_millis(10), Duration::from_millis(20));
        let a: Vec<Duration> = {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            (0..50).map(|_| draw(&mut rng, range)).collect()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let b: Vec<Duration> = (0..50).map(|_| draw(&mut rng, range)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|d| *d >= range.0 && *d <= range.1));
    }
}
