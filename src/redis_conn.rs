//! The one Redis connection type every store uses: one node (the crate's reconnecting
//! `ConnectionManager`) or a Redis Cluster (the crate's async `ClusterConnection`, which routes
//! each command by the slot of its key, follows `MOVED`/`ASK` and refreshes its slot map after
//! a failover). Built once, in [`RedisConn::connect`]; cheap to clone (every clone multiplexes
//! on the same sockets).
//!
//! On a cluster, what goes on the wire differs from one node in three places, all handled here
//! so the stores need not know:
//! - a pipeline whose commands touch several slots (a webhook whose events belong to several
//!   channels) is split by slot, each part sent to its slot's master, the replies put back in
//!   order (a transaction, `MULTI`/`EXEC`, must stay in one slot: it is sent whole);
//! - `SCRIPT LOAD` (the `NOSCRIPT` fallback of `redis::Script`) goes to every master, so a
//!   script is cached on whichever node the next `EVALSHA` lands on;
//! - `WAIT` (durability = "replicated") goes to the master of the slot that took the write.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, Slot,
    SlotAddr,
};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Where Redis is: one node, or the seed nodes of a cluster. The URLs may carry a password, so
/// `Debug` prints neither.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    Single(String),
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Single(_) => f.write_str("Endpoint::Single(***)"),
            Endpoint::Cluster(seeds) => write!(f, "Endpoint::Cluster({} seeds, ***)", seeds.len()),
        }
    }
}

/// Timeouts and retries of the shared connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// One command (or pipeline) on one node; on a cluster also the bound of the whole request
    /// with its retries and redirections.
    pub response_timeout: Duration,
    pub connection_timeout: Duration,
}

/// One node or a cluster; see the module documentation.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl From<ConnectionManager> for RedisConn {
    fn from(c: ConnectionManager) -> Self {
        RedisConn::Single(c)
    }
}

impl From<ClusterConnection> for RedisConn {
    fn from(c: ClusterConnection) -> Self {
        RedisConn::Cluster(c)
    }
}

/// The cluster client for `seeds` with our timeouts. Few, short retries: while a slot has no
/// master (a failover in progress) callers should get an error quickly (ingress answers 503,
/// Meta retries) rather than hang; `response_timeout` bounds the whole request.
pub fn cluster_client(
    seeds: &[String],
    response_timeout: Duration,
    connection_timeout: Duration,
) -> Result<redis::cluster::ClusterClient, RedisError> {
    redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .response_timeout(response_timeout)
        .overall_response_timeout(Some(response_timeout))
        .connection_timeout(connection_timeout)
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()
}

impl RedisConn {
    /// Connects now (failing if no node answers).
    pub async fn connect(
        endpoint: &Endpoint,
        options: ConnectOptions,
    ) -> Result<RedisConn, RedisError> {
        match endpoint {
            Endpoint::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                // Few, short reconnect retries: while Redis is down, callers should get an
                // error (ingress: 503, the sender retries) quickly rather than hang.
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(options.response_timeout))
                    .set_connection_timeout(Some(options.connection_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(RedisConn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            Endpoint::Cluster(seeds) => {
                let client =
                    cluster_client(seeds, options.response_timeout, options.connection_timeout)?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// `WAIT replicas timeout_ms` on the node that holds `key` (the master of its slot on a
    /// cluster), on the connection that carried the write: how many replicas acknowledged
    /// every write this connection made to that node so far.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> Result<u32, RedisError> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        let acked: i64 = match self {
            RedisConn::Single(c) => cmd.query_async(c).await?,
            RedisConn::Cluster(c) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(v).map_err(RedisError::from)?
            }
        };
        Ok(acked.max(0) as u32)
    }
}

/// The key a command of ours is routed by: the first key of `EVAL`/`EVALSHA` (after the key
/// count), else the first argument. `None`: the command has no key (`PING`, `WAIT`, …) or is
/// one we do not split.
fn routing_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    });
    let name = args.next()??.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" => {
            let _script = args.next()??;
            let numkeys: usize = std::str::from_utf8(args.next()??).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            Some(args.next()??.to_vec())
        }
        b"PING" | b"WAIT" | b"SCRIPT" | b"INFO" | b"CLUSTER" | b"MULTI" | b"EXEC" => None,
        _ => Some(args.next()??.to_vec()),
    }
}

/// A non-transactional pipeline whose commands touch several slots, as (slot part, indices in
/// the pipeline). `None`: send it whole (one slot, a transaction, or a keyless command in it).
fn split_by_slot(
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> Option<Vec<(Pipeline, Vec<usize>)>> {
    if pipeline.is_transaction() || offset != 0 || count != pipeline.len() {
        return None;
    }
    let mut parts: Vec<(Slot, Pipeline, Vec<usize>)> = Vec::new();
    let mut index: HashMap<Slot, usize> = HashMap::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let slot = Slot::for_key(routing_key(cmd)?);
        let at = *index.entry(slot).or_insert_with(|| {
            parts.push((slot, Pipeline::new(), Vec::new()));
            parts.len() - 1
        });
        parts[at].1.add_command(cmd.clone());
        parts[at].2.push(i);
    }
    (parts.len() > 1).then(|| parts.into_iter().map(|(_, p, i)| (p, i)).collect())
}

fn is_script_load(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter();
    let first =
        matches!(args.next(), Some(redis::Arg::Simple(b)) if b.eq_ignore_ascii_case(b"SCRIPT"));
    first && matches!(args.next(), Some(redis::Arg::Simple(b)) if b.eq_ignore_ascii_case(b"LOAD"))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => {
                if !is_script_load(cmd) {
                    return c.req_packed_command(cmd);
                }
                // Every master, not every node: a replica runs no script until it is promoted,
                // and then the NOSCRIPT fallback loads it there. A dead replica must not make
                // the load fail.
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                Box::pin(c.route_command(cmd.clone(), routing))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => match split_by_slot(pipeline, offset, count) {
                None => c.req_packed_commands(pipeline, offset, count),
                Some(parts) => Box::pin(async move {
                    let sent = parts.into_iter().map(|(part, indices)| {
                        let mut c = c.clone();
                        async move {
                            let n = part.len();
                            let values = c.req_packed_commands(&part, 0, n).await?;
                            Ok::<_, RedisError>((values, indices))
                        }
                    });
                    let answers = futures_util::future::join_all(sent).await;
                    let mut out = vec![Value::Nil; count];
                    for answer in answers {
                        let (values, indices) = answer?;
                        for (v, i) in values.into_iter().zip(indices) {
                            out[i] = v;
                        }
                    }
                    Ok(out)
                }),
            },
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_of_our_commands() {
        let mut c = redis::cmd("EVALSHA");
        c.arg("abc").arg(2).arg("cx:{a}:seen:1").arg("cx:{a}:alias");
        assert_eq!(routing_key(&c).unwrap(), b"cx:{a}:seen:1");
        let mut c = redis::cmd("xlen");
        c.arg("cx:{b}:in:0");
        assert_eq!(routing_key(&c).unwrap(), b"cx:{b}:in:0");
        let mut c = redis::cmd("EVAL");
        c.arg("return 1").arg(0);
        assert!(routing_key(&c).is_none());
        assert!(routing_key(&redis::cmd("PING")).is_none());
    }

    #[test]
    fn a_pipeline_is_split_only_across_slots() {
        let mut one = redis::pipe();
        one.cmd("XLEN")
            .arg("cx:{a}:in:0")
            .cmd("GET")
            .arg("cx:{a}:lease:0");
        assert!(split_by_slot(&one, 0, one.len()).is_none());

        let mut three = redis::pipe();
        three
            .cmd("XLEN")
            .arg("cx:{a}:in:0")
            .cmd("XLEN")
            .arg("cx:{b}:in:0")
            .cmd("GET")
            .arg("cx:{a}:lease:0");
        let parts = split_by_slot(&three, 0, three.len()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, vec![0, 2]);
        assert_eq!(parts[1].1, vec![1]);

        let mut tx = three.clone();
        tx.atomic();
        assert!(split_by_slot(&tx, tx.len() + 1, 1).is_none());

        let mut keyless = three.clone();
        keyless.cmd("PING");
        assert!(split_by_slot(&keyless, 0, keyless.len()).is_none());
    }

    #[test]
    fn script_load_is_recognised() {
        let mut c = redis::cmd("SCRIPT");
        c.arg("LOAD").arg("return 1");
        assert!(is_script_load(&c));
        let mut c = redis::cmd("SCRIPT");
        c.arg("EXISTS").arg("abc");
        assert!(!is_script_load(&c));
    }

    #[test]
    fn endpoints_never_print_their_urls() {
        let e = Endpoint::Cluster(vec!["redis://:pw@10.0.0.1:7000".into()]);
        assert!(!format!("{e:?}").contains("pw"));
        let e = Endpoint::Single("redis://:pw@10.0.0.1:7000".into());
        assert!(!format!("{e:?}").contains("pw"));
    }
}
