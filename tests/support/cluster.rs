//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` nodes on free loopback
//! ports (AOF on), joined with `redis-cli --cluster create … --cluster-yes`, ready when every
//! node reports `cluster_state:ok` (and every replica is in sync).
//!
//! - [`shared`]: ONE 3-master cluster per test binary, started on first use; tests share it
//!   through their own key prefixes, as they do the single shared server.
//! - [`Cluster::start`]: a private cluster (e.g. with replicas, to kill a master).

use super::RedisServer;
use coexist::redis_conn::Endpoint;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slot ranges (inclusive), for a master.
    pub slots: Vec<(u16, u16)>,
}

/// The shared 3-master cluster of this test binary (no replicas).
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| Cluster::start(3, 0, 5000))
}

impl Cluster {
    /// `masters` masters, each with `replicas` replicas; `node_timeout_ms` is how long a master
    /// may be unreachable before its replica is promoted.
    pub fn start(masters: usize, replicas: usize, node_timeout_ms: u64) -> Cluster {
        let n = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::start_cluster_node(node_timeout_ms))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let out = create
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli (comes with redis-server) must be on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes };
        cluster.wait_ready(Duration::from_secs(30));
        cluster
    }

    /// Every running node's URL (seed nodes for the client).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.url())
            .collect()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Cluster(self.seeds())
    }

    /// The `[redis]` lines of a config file for this cluster.
    pub fn toml(&self) -> String {
        let seeds: Vec<String> = self.seeds().iter().map(|s| format!("{s:?}")).collect();
        format!("cluster = [{}]", seeds.join(", "))
    }

    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// `CLUSTER NODES` as seen by a running node.
    pub fn topology(&self) -> Vec<NodeInfo> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        let text: String =
            sync_query(node.port(), redis::cmd("CLUSTER").arg("NODES")).expect("CLUSTER NODES");
        parse_nodes(&text)
    }

    /// Ports of the masters that serve slots, by their first slot.
    pub fn masters(&self) -> Vec<u16> {
        let mut m: Vec<NodeInfo> = self
            .topology()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .collect();
        m.sort_by_key(|n| n.slots[0].0);
        m.into_iter().map(|n| n.port).collect()
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = key_slot(key);
        self.topology()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
            .port
    }

    /// Waits until every running node says `cluster_state:ok`, agrees on the masters, and
    /// every replica's link to its master is up.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.not_ready() {
                None => return,
                Some(why) if Instant::now() > deadline => {
                    panic!("cluster not ready after {timeout:?}: {why}")
                }
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn not_ready(&self) -> Option<String> {
        let mut views = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let port = node.port();
            let info: String = match sync_query(port, redis::cmd("CLUSTER").arg("INFO")) {
                Ok(i) => i,
                Err(e) => return Some(format!("{port}: {e}")),
            };
            if !info.contains("cluster_state:ok") {
                return Some(format!("{port}: cluster_state not ok"));
            }
            let text: String = match sync_query(port, redis::cmd("CLUSTER").arg("NODES")) {
                Ok(t) => t,
                Err(e) => return Some(format!("{port}: {e}")),
            };
            let mut masters: Vec<u16> = parse_nodes(&text)
                .into_iter()
                .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                .map(|n| n.port)
                .collect();
            masters.sort_unstable();
            views.push(masters);
            let repl: String = match sync_query(port, redis::cmd("INFO").arg("replication")) {
                Ok(r) => r,
                Err(e) => return Some(format!("{port}: {e}")),
            };
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return Some(format!("{port}: replica link down"));
            }
        }
        if views.windows(2).any(|w| w[0] != w[1]) {
            return Some(format!("nodes disagree on the masters: {views:?}"));
        }
        None
    }
}

/// The Redis Cluster hash slot of `key` (CRC16 of its hash tag, mod 16384), as
/// `CLUSTER KEYSLOT` computes it.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The URL of the master serving `key` when `con` is a cluster node; `None` on a plain server.
pub async fn master_url_of(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Option<String> {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(con)
        .await
        .ok()?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(con)
        .await
        .ok()?;
    parse_nodes(&text)
        .into_iter()
        .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
        .map(|n| format!("redis://127.0.0.1:{}/", n.port))
}

/// One command on one node, synchronously (harness code runs outside the runtime too).
pub fn sync_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    cmd.query(&mut con)
}

fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split('@').next()?;
            let port: u16 = addr.rsplit(':').next()?.parse().ok()?;
            let flags = f[2];
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeInfo {
                id: f[0].to_string(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}
