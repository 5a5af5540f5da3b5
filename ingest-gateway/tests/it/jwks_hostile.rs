//! An identity provider that misbehaves: a JWKS too large to hold (with a `Content-Length`, or
//! chunked without one), and one that accepts the connection and never answers. Neither may
//! cost the gateway its memory, its keys or any request's time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::App;
use reqwest::Method;
use shared::jwt::DevKeys;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const NORMAL: u8 = 0;
const HUGE_WITH_LENGTH: u8 = 1;
const HUGE_CHUNKED: u8 = 2;
const SILENT: u8 = 3;

/// A raw HTTP/1.1 JWKS server (raw, so the test decides framing: length or chunks).
struct Provider {
    url: String,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicUsize>,
}

async fn provider(jwks: String, mode: u8) -> anyhow::Result<Provider> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/jwks.json", listener.local_addr()?);
    let mode = Arc::new(AtomicU8::new(mode));
    let requests = Arc::new(AtomicUsize::new(0));
    let (m, r) = (mode.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (mode, jwks) = (m.load(Ordering::SeqCst), jwks.clone());
            r.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                // 4 MiB of whitespace-padded JSON: valid if it were read whole.
                let huge = format!("{{\"keys\": []{}}}", " ".repeat(4 << 20));
                let result = match mode {
                    NORMAL => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            jwks.len()
                        );
                        socket.write_all(format!("{head}{jwks}").as_bytes()).await
                    }
                    HUGE_WITH_LENGTH => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            huge.len()
                        );
                        socket.write_all(format!("{head}{huge}").as_bytes()).await
                    }
                    HUGE_CHUNKED => {
                        let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
                        for chunk in huge.as_bytes().chunks(64 * 1024) {
                            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                            out.extend_from_slice(chunk);
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(b"0\r\n\r\n");
                        socket.write_all(&out).await
                    }
                    _ => {
                        // Hold the connection open and say nothing.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(())
                    }
                };
                drop(result);
            });
        }
    });
    Ok(Provider {
        url,
        mode,
        requests,
    })
}

async fn metric(app: &App, name: &str) -> anyhow::Result<f64> {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_jwks_is_refused_and_a_bad_refresh_keeps_the_keys() -> anyhow::Result<()> {
    let es = DevKeys::generate()?;
    let jwks = serde_json::to_string(&es.jwks())?;
    for mode in [HUGE_WITH_LENGTH, HUGE_CHUNKED] {
        let idp = provider(jwks.clone(), mode).await?;
        let result = App::spawn_with(|c| {
            c.gateway.auth.jwks_url = Some(idp.url.clone());
            c.gateway.auth.jwks_file = None;
            c.gateway.auth.allow_insecure_jwks_url = true;
        })
        .await;
        let err = result.err().expect("an oversized JWKS fails start-up");
        let text = format!("{err:#}");
        assert!(
            text.contains("larger than gateway.auth.jwks_max_bytes"),
            "mode {mode}: {text}"
        );
    }

    let idp = provider(jwks, NORMAL).await?;
    let app = App::spawn_with(|c| {
        c.gateway.auth.jwks_url = Some(idp.url.clone());
        c.gateway.auth.jwks_file = None;
        c.gateway.auth.allow_insecure_jwks_url = true;
        c.gateway.auth.jwks_cache_ttl = Duration::from_secs(1);
    })
    .await?;
    let token = es.issue(&app.claims(None, true))?;
    assert_eq!(
        app.json(Method::GET, "/v1/dlq", Some(&token), None)
            .await?
            .0,
        200
    );
    assert_eq!(metric(&app, "harborhook_jwks_keys").await?, 1.0);

    // The provider turns hostile: refreshes fail (counted), the keys we had stay in use.
    idp.mode.store(HUGE_CHUNKED, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while metric(&app, "harborhook_jwks_refresh_failures_total").await? < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "refreshes were tried and failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = app.json(Method::GET, "/v1/dlq", Some(&token), None).await?;
    assert_eq!(status, 200, "the loaded keys outlive a bad refresh: {body}");
    assert_eq!(metric(&app, "harborhook_jwks_keys").await?, 1.0);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_identity_provider_delays_no_request() -> anyhow::Result<()> {
    let es = DevKeys::generate()?;
    let idp = provider(serde_json::to_string(&es.jwks())?, NORMAL).await?;
    let app = App::spawn_with(|c| {
        c.gateway.auth.jwks_url = Some(idp.url.clone());
        c.gateway.auth.jwks_file = None;
        c.gateway.auth.allow_insecure_jwks_url = true;
        c.gateway.auth.jwks_cache_ttl = Duration::from_secs(1);
        // Far longer than the client below waits: a request that waited on the refresh
        // could not answer in time.
        c.gateway.auth.jwks_fetch_timeout = Duration::from_secs(60);
    })
    .await?;
    let token = es.issue(&app.claims(None, true))?;
    let before = idp.requests.load(Ordering::SeqCst);
    idp.mode.store(SILENT, Ordering::SeqCst);
    // Wait until the background refresh is stuck in the silent provider...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while idp.requests.load(Ordering::SeqCst) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and past the cache TTL: every request must still be answered from the keys we have.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = shared::tls::http_client()
        .timeout(Duration::from_secs(5))
        .build()?;
    for _ in 0..20 {
        let status = client
            .get(app.url("/v1/dlq"))
            .bearer_auth(&token)
            .send()
            .await?
            .status();
        assert_eq!(status, 200);
    }
    // The refresher is still inside the silent fetch: shutdown abandons it.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the gateway did not stop while its refresh hung"))?
}
