//! Shared integration-test harness: real `redis-server` processes, unique key prefixes,
//! stream readers for assertions. Every test binary may `mod support;`.
//!
//! - [`shared_url`]: ONE server per test binary (or `REDIS_URL` when set), started on first use,
//!   `--save "" --appendonly no`. Tests share it safely because each uses its own key prefix
//!   ([`prefix`] / [`keys`]).
//! - [`RedisServer::start`]: a private server a test can [`stop`](RedisServer::stop),
//!   [`kill`](RedisServer::kill) and [`restart`](RedisServer::restart) on the same port and
//!   data directory (optionally with `--appendonly yes`, so data survives the restart).
//!
//! Servers die with the test process even when it never runs destructors (the shared server is
//! a static): they are spawned through `setpriv --pdeathsig KILL` from one thread that lives as
//! long as the process (a parent-death signal fires when the *spawning thread* exits).
#![allow(dead_code)]

pub mod cluster;

use coexist::keys::Keys;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Options of a private server.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisOptions {
    /// `--appendonly yes`: acknowledged writes survive a stop/kill and restart.
    pub appendonly: bool,
}

/// A `redis-server` child process on a fixed port and data directory.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    options: RedisOptions,
    /// `--cluster-enabled yes` with this `--cluster-node-timeout` (ms): a Redis Cluster node
    /// (see [`cluster`]).
    cluster_node_timeout_ms: Option<u64>,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts a private server on a free port in a fresh temp dir.
    pub fn start(options: RedisOptions) -> RedisServer {
        let tempdir = tempfile::Builder::new()
            .prefix("coexist-redis-")
            .tempdir()
            .unwrap();
        let dir = tempdir.path().to_path_buf();
        RedisServer::start_in(dir, Some(tempdir), options, None)
    }

    /// Starts a Redis Cluster node (AOF on, not yet part of a cluster: see [`cluster`]).
    pub fn start_cluster_node(node_timeout_ms: u64) -> RedisServer {
        let tempdir = tempfile::Builder::new()
            .prefix("coexist-cluster-")
            .tempdir()
            .unwrap();
        let dir = tempdir.path().to_path_buf();
        let options = RedisOptions { appendonly: true };
        RedisServer::start_in(dir, Some(tempdir), options, Some(node_timeout_ms))
    }

    fn start_in(
        dir: PathBuf,
        tempdir: Option<tempfile::TempDir>,
        options: RedisOptions,
        cluster_node_timeout_ms: Option<u64>,
    ) -> Self {
        let server = RedisServer {
            port: match cluster_node_timeout_ms {
                Some(_) => free_cluster_port(),
                None => free_port(),
            },
            dir,
            _tempdir: tempdir,
            options,
            cluster_node_timeout_ms,
            child: Mutex::new(None),
        };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    /// (Re)starts the server on the same port and directory; waits until it answers PING.
    /// No-op when it is running.
    pub fn restart(&self) {
        let mut child = self.child.lock().unwrap();
        if child.is_some() {
            return;
        }
        let mut cmd = redis_command(&redis_server_path());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if self.options.appendonly { "yes" } else { "no" })
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg("");
        if let Some(timeout) = self.cluster_node_timeout_ms {
            cmd.arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{}.conf", self.port)))
                .arg("--cluster-node-timeout")
                .arg(timeout.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let spawned = spawn_from_keeper(cmd);
        *child = Some(spawned);
        drop(child);
        self.wait_ready();
    }

    /// Graceful stop (SIGTERM: with AOF on, everything acknowledged is on disk).
    pub fn stop(&self) {
        self.terminate("TERM");
    }

    /// Crash (SIGKILL).
    pub fn kill(&self) {
        self.terminate("KILL");
    }

    fn terminate(&self, signal: &str) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        // Our own child, not yet reaped: its pid cannot have been reused.
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ping(self.port) {
                return;
            }
            if let Some(child) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "redis-server on port {} exited at start: {status}",
                        self.port
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} did not answer PING within 20 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The URL of this test binary's shared server: `REDIS_URL` when set, else one
/// `redis-server` started on first use (`--save "" --appendonly no`).
pub fn shared_url() -> String {
    if let Ok(url) = std::env::var("REDIS_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // Nothing is ever written to disk (no RDB, no AOF): no temp dir to clean up.
            RedisServer::start_in(std::env::temp_dir(), None, RedisOptions::default(), None)
        })
        .url()
}

/// A key prefix unique to one test (`t<random>`), so tests run in parallel on one server.
pub fn prefix() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

/// [`Keys`] with a fresh unique prefix.
pub fn keys() -> Keys {
    Keys::new(prefix())
}

/// One stream entry as XRANGE returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: HashMap<String, String>,
}

impl StreamEntry {
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A plain multiplexed connection for assertions (not the code under test's).
pub async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// A plain connection to the node that holds `key`: `url` itself, or on a Redis Cluster the
/// master of the key's slot (any node of the cluster may be given).
pub async fn connection_for_key(url: &str, key: &str) -> redis::aio::MultiplexedConnection {
    let mut con = connection(url).await;
    match cluster::master_url_of(&mut con, key).await {
        Some(master) if master != url => connection(&master).await,
        _ => con,
    }
}

/// Every entry of a stream, oldest first (`XRANGE key - +`).
pub async fn xrange(url: &str, key: &str) -> Vec<StreamEntry> {
    let mut con = connection_for_key(url, key).await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|sid| StreamEntry {
            id: sid.id,
            fields: sid
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect(),
        })
        .collect()
}

/// `XLEN key`.
pub async fn xlen(url: &str, key: &str) -> u64 {
    let mut con = connection_for_key(url, key).await;
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap()
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_server_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH: install it (apt-get install redis-server) \
                 or set REDIS_URL to a server the tests may write to"
            )
        })
}

/// `setpriv --pdeathsig KILL redis-server …` when setpriv exists, else plain `redis-server …`.
fn redis_command(server: &Path) -> Command {
    if Path::new("/usr/bin/setpriv").is_file() {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.arg("--pdeathsig").arg("KILL").arg(server);
        cmd
    } else {
        Command::new(server)
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns on a thread that lives as long as the process, so the parent-death signal fires at
/// process exit, not when the (short-lived) test thread that asked for the server ends.
fn spawn_from_keeper(cmd: Command) -> Child {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("redis-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender is a static: never reached, the thread lives until exit.
            })
            .unwrap();
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper.lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port P whose cluster bus port P + 10000 is free too (so P ≤ 55535: an ephemeral
/// port from the kernel may be higher, and redis-server refuses it as a cluster node).
fn free_cluster_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..45_000u16);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A child process of the real binary (`coexist work`, `run`, `serve`), killed if the test
/// ends early: a failed assertion must not leave processes running.
pub struct Proc(pub std::process::Child);

impl Proc {
    /// SIGKILL: no goodbye (leases expire, nothing is released).
    pub fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then a clean exit (status 0) within 25 s.
    pub fn stop(mut self) {
        self.sigterm();
        match self.wait_exit(Duration::from_secs(25)) {
            Some(status) => assert!(status.success(), "exit status {status}"),
            None => panic!("process did not stop after SIGTERM"),
        }
    }
}

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
