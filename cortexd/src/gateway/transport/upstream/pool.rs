//! Idle keep-alive connections to the neurons, by `host:port`: the most recently used first, each
//! kept until it has been idle for [`IDLE_TIMEOUT`], checked for a close before it is reused.
//! Expired connections are dropped whenever the pool is used: those of the host at hand at once,
//! every host's at most every third of that (a neuron that left the fleet keeps none).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long an idle connection stays pooled (reqwest's and hyper's default too). The pool keeps
/// every idle connection until then (no count cap): a cap closes the connections a burst opened
/// as soon as they are free, and under a sustained burst that churn fills the host's ephemeral
/// ports with TIME_WAIT sockets until new connections fail.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Hosts>,
    /// [`IDLE_TIMEOUT`] but in tests.
    timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::with_idle_timeout(IDLE_TIMEOUT)
    }
}

#[derive(Debug, Default)]
struct Hosts {
    by_host: HashMap<String, Vec<Idle>>,
    swept: Option<Instant>,
}

impl Hosts {
    /// Drop every host's expired connections if the last sweep is a third of `timeout` ago.
    fn sweep(&mut self, timeout: Duration) {
        if self.swept.is_some_and(|at| at.elapsed() < timeout / 3) {
            return;
        }
        self.swept = Some(Instant::now());
        self.by_host.retain(|_, list| {
            expire(list, timeout);
            !list.is_empty()
        });
    }
}

#[derive(Debug)]
struct Idle {
    io: TcpStream,
    since: Instant,
}

impl Pool {
    pub fn with_idle_timeout(timeout: Duration) -> Self {
        Pool { idle: Mutex::default(), timeout }
    }

    /// An idle connection to `host` that is still open, if there is one.
    pub fn checkout(&self, host: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.sweep(self.timeout);
        let list = idle.by_host.get_mut(host)?;
        expire(list, self.timeout);
        while let Some(connection) = list.pop() {
            if open(&connection.io) {
                return Some(connection.io);
            }
        }
        None
    }

    /// Keep `io` for the next request to `host`.
    fn checkin(&self, host: &str, io: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.sweep(self.timeout);
        let list = match idle.by_host.get_mut(host) {
            Some(list) => list,
            None => idle.by_host.entry(host.to_owned()).or_default(),
        };
        expire(list, self.timeout);
        list.push(Idle { io, since: Instant::now() });
    }

    /// How many hosts the pool holds idle connections for.
    #[cfg(test)]
    pub fn hosts(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).by_host.len()
    }

    /// How many idle connections to `host` the pool holds.
    #[cfg(test)]
    pub fn idle(&self, host: &str) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).by_host.get(host).map_or(0, Vec::len)
    }
}

/// Drop the connections idle for longer than `timeout` (the oldest are first).
fn expire(list: &mut Vec<Idle>, timeout: Duration) {
    let fresh = list.iter().position(|c| c.since.elapsed() < timeout).unwrap_or(list.len());
    list.drain(..fresh);
}

/// Whether an idle connection is still open: nothing to read yet. A close (or stray bytes an
/// idle connection must not have) means it cannot carry another request.
fn open(io: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(io.try_read(&mut probe), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

/// Where a response body returns its connection once it has been read to the end.
#[derive(Debug)]
pub struct Return {
    pub pool: Arc<Pool>,
    pub host: String,
}

impl Return {
    pub fn give(self, io: TcpStream) {
        self.pool.checkin(&self.host, io);
    }
}
