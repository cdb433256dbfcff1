//! Idle keep-alive connections to the neurons, by `host:port`: the most recently used first, each
//! kept until it has been idle for [`IDLE_TIMEOUT`], checked for a close before it is reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long an idle connection stays pooled (reqwest's and hyper's default too). The pool keeps
/// every idle connection until then (no count cap): a cap closes the connections a burst opened
/// as soon as they are free, and under a sustained burst that churn fills the host's ephemeral
/// ports with TIME_WAIT sockets until new connections fail.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

#[derive(Debug)]
struct Idle {
    io: TcpStream,
    since: Instant,
}

impl Pool {
    /// An idle connection to `host` that is still open, if there is one.
    pub fn checkout(&self, host: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(host)?;
        expire(list);
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
        let list = match idle.get_mut(host) {
            Some(list) => list,
            None => idle.entry(host.to_owned()).or_default(),
        };
        expire(list);
        list.push(Idle { io, since: Instant::now() });
    }

    /// How many idle connections to `host` the pool holds.
    #[cfg(test)]
    pub fn idle(&self, host: &str) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).get(host).map_or(0, Vec::len)
    }
}

/// Drop the connections idle for longer than [`IDLE_TIMEOUT`] (the oldest are first).
fn expire(list: &mut Vec<Idle>) {
    let fresh = list.iter().position(|c| c.since.elapsed() < IDLE_TIMEOUT).unwrap_or(list.len());
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
