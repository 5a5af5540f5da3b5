//! What the hostile-input suite needs besides the platform: a receiver that answers like the
//! worst customer endpoints do, and a victim tenant whose deliveries must keep flowing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::{Value, json};
use shared::ids::TenantId;

use crate::platform::Platform;

/// How a receiver path answers.
#[derive(Clone, Debug)]
pub enum Answer {
    Ok,
    /// This status with this body.
    Status(u16, Vec<u8>),
    /// Accepts the request and never answers.
    Hang,
    /// 200 with a body that never ends, one byte a second.
    Drip,
    /// 200 with a body of this many bytes.
    Huge(usize),
}

type Log = Arc<Mutex<Vec<(Instant, String, HeaderMap, Bytes)>>>;

#[derive(Clone, Default)]
pub struct HostileReceiver {
    got: Log,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
}

async fn receive(
    State(r): State<HostileReceiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    r.got
        .lock()
        .expect("log")
        .push((Instant::now(), path.clone(), headers, body));
    let answer = r
        .answers
        .lock()
        .expect("answers")
        .get(&path)
        .cloned()
        .unwrap_or(Answer::Ok);
    match answer {
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::Status(code, body) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Answer::Drip => {
            let stream = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
            });
            Response::new(Body::from_stream(stream))
        }
        Answer::Huge(n) => (StatusCode::OK, vec![b'z'; n]).into_response(),
    }
}

impl HostileReceiver {
    pub async fn start() -> anyhow::Result<(Self, SocketAddr)> {
        let r = Self::default();
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(receive))
            .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((r, addr))
    }

    pub fn answer(&self, path: &str, answer: Answer) {
        self.answers
            .lock()
            .expect("answers")
            .insert(path.to_owned(), answer);
    }

    pub fn bodies(&self, path: &str) -> Vec<Bytes> {
        self.got
            .lock()
            .expect("log")
            .iter()
            .filter(|g| g.1 == path)
            .map(|g| g.3.clone())
            .collect()
    }

    /// Waits until `path` got a request whose body satisfies `pred`, or `within` passed.
    pub async fn wait_for(
        &self,
        path: &str,
        within: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.bodies(path).iter().any(|b| pred(b)) {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < within,
                "{path}: no matching request within {within:?} ({} requests)",
                self.bodies(path).len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The tenant whose deliveries every attack must leave alone.
pub struct Victim {
    pub tenant: TenantId,
    pub token: String,
    seq: Mutex<u64>,
}

/// How long the victim's next event may take to arrive, whatever the attacker did.
pub const VICTIM_WITHIN: Duration = Duration::from_secs(10);

impl Victim {
    pub async fn new(p: &Platform, url: String) -> anyhow::Result<Self> {
        let (tenant, token) = p.tenant().await?;
        p.endpoint(&tenant, &token, url, "*").await?;
        Ok(Self {
            tenant,
            token,
            seq: Mutex::new(0),
        })
    }

    /// Publishes a victim event and waits until it has arrived at the victim's receiver and is
    /// recorded as delivered (its outcome durable, so its offset may move on).
    pub async fn still_served(
        &self,
        p: &Platform,
        receiver: &HostileReceiver,
    ) -> anyhow::Result<Duration> {
        let start = std::time::Instant::now();
        let n = {
            let mut seq = self.seq.lock().expect("seq");
            *seq += 1;
            *seq
        };
        let body = json!({"event_type": "victim.ping", "payload": {"victim": n}});
        let (status, r) = p
            .call(
                Method::POST,
                &format!("/v1/tenants/{}/events:publish", self.tenant),
                &self.token,
                Some(body),
                None,
            )
            .await?;
        anyhow::ensure!(status == 202, "victim publish answered {status}: {r}");
        let marker = format!("{{\"victim\":{n}}}");
        receiver
            .wait_for("victim", VICTIM_WITHIN, |b| b == marker.as_bytes())
            .await?;
        let event = r["event_id"].as_str().unwrap_or_default().to_owned();
        loop {
            let (_, page) = p
                .call(
                    Method::GET,
                    &format!("/v1/events/{event}/deliveries"),
                    &self.token,
                    None,
                    None,
                )
                .await?;
            if page["data"][0]["status"] == "delivered" {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < VICTIM_WITHIN,
                "received but not recorded as delivered within {VICTIM_WITHIN:?}: {page}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The status of an API call, for attacks that only care that it was refused cleanly.
pub async fn status_of(
    p: &Platform,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let (s, v) = p.call(method, path, token, body, None).await?;
    Ok((s.as_u16(), v))
}
