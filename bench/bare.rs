//! The floor coexist's ingest is measured against (issue 10): a bare actix-web server that
//! does only what any webhook receiver must — read the body, verify Meta's HMAC, one `XADD` of
//! the raw body to one stream, answer 200. No parsing, no dedupe, no routing, no partitions.
//! `bench/versus-bare.sh` runs it and `coexist serve` under the same load in one run.
//!
//!   coexist-bare <listen addr> <redis url>      (secret in META_APP_SECRET)

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use coexist::config::Secret;
use coexist::verify::verify_meta;
use redis::aio::MultiplexedConnection;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    secrets: Vec<Secret>,
    redis: MultiplexedConnection,
}

async fn webhook(req: HttpRequest, body: web::Bytes, bare: web::Data<Bare>) -> HttpResponse {
    let header = req
        .headers()
        .get("x-hub-signature-256")
        .map(|v| v.as_bytes());
    if verify_meta(header, &body, &bare.secrets).is_err() {
        return HttpResponse::Unauthorized().finish();
    }
    let mut con = bare.redis.clone();
    let added: redis::RedisResult<String> = redis::cmd("XADD")
        .arg("bare:{shop}:0")
        .arg("*")
        .arg("e")
        .arg(body.as_ref())
        .query_async(&mut con)
        .await;
    match added {
        Ok(_) => HttpResponse::Ok().finish(),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(redis_url)) = (args.next(), args.next()) else {
        eprintln!("usage: coexist-bare <listen addr> <redis url>  (secret in META_APP_SECRET)");
        std::process::exit(2);
    };
    let secret = std::env::var("META_APP_SECRET").unwrap_or_default();
    let workers = std::env::var("BARE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    actix_web::rt::System::new().block_on(async move {
        let client = redis::Client::open(redis_url).map_err(std::io::Error::other)?;
        HttpServer::new(move || {
            let client = client.clone();
            let secrets = vec![Secret::new(secret.clone())];
            // One multiplexed connection per HTTP worker, made on the worker's thread: the
            // same arrangement coexist's ingress uses.
            App::new()
                .data_factory(move || {
                    let client = client.clone();
                    let secrets = secrets.clone();
                    async move {
                        let redis = client.get_multiplexed_async_connection().await?;
                        Ok::<_, redis::RedisError>(Bare { secrets, redis })
                    }
                })
                .route("/webhooks/meta", web::post().to(webhook))
                .route("/readyz", web::get().to(HttpResponse::Ok))
        })
        .workers(workers)
        .bind(listen)?
        .run()
        .await
    })
}
