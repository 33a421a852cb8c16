//! A TCP proxy on loopback that a test controls, to put faults between a replica and its
//! primary: it accepts on `127.0.0.1:0` and forwards each connection to a target address,
//! bytes as they are, on two threads per connection (std only, no runtime).
//!
//! - [`Proxy::stall`] stops forwarding bytes both ways (connections stay open, new ones are
//!   still accepted and connected, and stall too); [`Proxy::resume`] lets them flow again.
//! - [`Proxy::cut`] closes every current connection (both sides).
//! - [`Proxy::set_target`] sends the connections accepted from then on elsewhere; one whose
//!   target does not answer is closed at once (the client sees its connection closed).
//! - [`Proxy::accepted`] counts the connections accepted, [`Proxy::forwarded`] those that
//!   reached their target.
//!
//! Dropping the proxy stops accepting and closes every connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the proxy tries to reach its target for one accepted connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: Mutex<SocketAddr>,
    stalled: Mutex<bool>,
    flow: Condvar,
    connections: Mutex<Vec<Arc<Connection>>>,
    accepted: AtomicUsize,
    forwarded: AtomicUsize,
    stopping: AtomicBool,
}

/// One proxied connection: the client's side and the target's.
struct Connection {
    client: TcpStream,
    upstream: TcpStream,
    closed: AtomicBool,
    /// Pumps still running (two at the start); the last one out closes and forgets it.
    pumps: AtomicUsize,
}

impl Connection {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// A proxy to `target`, listening on a loopback port of the system's choosing.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            stalled: Mutex::new(false),
            flow: Condvar::new(),
            connections: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let acceptor =
            std::thread::Builder::new().name("proxy-accept".into()).spawn(move || accept_loop(listener, accepting))?;
        Ok(Proxy { addr, shared, acceptor: Some(acceptor) })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding bytes, both ways, on every connection, current and new.
    pub fn stall(&self) {
        *self.shared.stalled.lock().unwrap() = true;
    }

    /// Forwards bytes again.
    pub fn resume(&self) {
        *self.shared.stalled.lock().unwrap() = false;
        self.shared.flow.notify_all();
    }

    /// Closes every current connection, both sides.
    pub fn cut(&self) {
        let connections = std::mem::take(&mut *self.shared.connections.lock().unwrap());
        for connection in connections {
            connection.close();
        }
        self.shared.flow.notify_all();
    }

    /// Connections accepted from now on go to `target`.
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
    }

    /// Connections accepted so far (whether or not their target answered).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections that reached their target so far.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let target = *shared.target.lock().unwrap();
        let upstream = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
            Ok(upstream) => upstream,
            // The target is unreachable: the client sees its connection closed.
            Err(_) => continue,
        };
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let streams = (|| {
            Ok::<_, std::io::Error>((
                client.try_clone()?,
                upstream.try_clone()?,
                client.try_clone()?,
                upstream.try_clone()?,
            ))
        })();
        let Ok((client_in, upstream_out, client_out, upstream_in)) = streams else { continue };
        let connection =
            Arc::new(Connection { client, upstream, closed: AtomicBool::new(false), pumps: AtomicUsize::new(2) });
        shared.connections.lock().unwrap().push(connection.clone());
        for (from, to, name) in [(client_in, upstream_out, "proxy-up"), (upstream_in, client_out, "proxy-down")] {
            let (shared, pumped) = (shared.clone(), connection.clone());
            let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
                pump(from, to, &shared, &pumped);
                if pumped.pumps.fetch_sub(1, Ordering::SeqCst) == 1 {
                    pumped.close();
                    shared.connections.lock().unwrap().retain(|c| !Arc::ptr_eq(c, &pumped));
                }
            });
            if spawned.is_err() {
                connection.close();
            }
        }
    }
}

/// Copies `from` to `to` while the connection is open, holding back while stalled. An end
/// of input is passed on as one (half-close); an error closes the whole connection.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, connection: &Connection) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if !shared.wait_flowing(connection) {
            return;
        }
        let n = match from.read(&mut buffer) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(_) => {
                connection.close();
                return;
            }
        };
        // Bytes read just as a stall began are held until it ends.
        if !shared.wait_flowing(connection) || to.write_all(&buffer[..n]).is_err() {
            connection.close();
            return;
        }
    }
}

impl Shared {
    /// Waits while stalled; false once the connection is closed.
    fn wait_flowing(&self, connection: &Connection) -> bool {
        let mut stalled = self.stalled.lock().unwrap();
        while *stalled && !connection.closed.load(Ordering::SeqCst) {
            stalled = self.flow.wait_timeout(stalled, Duration::from_millis(50)).unwrap().0;
        }
        !connection.closed.load(Ordering::SeqCst)
    }
}
