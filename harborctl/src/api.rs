//! Management commands over the HTTP API: endpoints, subscriptions, events, deliveries.
//!
//! The API URL, token and tenant come from flags, else `HARBORHOOK_URL`, `HARBORHOOK_TOKEN`,
//! `HARBORHOOK_TENANT`, else the file named by `HARBORHOOK_CLI_CONFIG` or
//! `~/.config/harborctl/config.toml` (`url = …`, `token = …`, `tenant = …`).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::CliError;
use crate::output::{block, emit, table};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    url: Option<String>,
    token: Option<String>,
    tenant: Option<String>,
}

/// Where the API is and who we are.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Conn {
    /// API base URL [env: HARBORHOOK_URL] (default http://127.0.0.1:8080).
    #[arg(
        long = "api-url",
        id = "api_url",
        global = true,
        env = "HARBORHOOK_URL",
        hide_env = true
    )]
    pub url: Option<String>,
    /// Bearer token [env: HARBORHOOK_TOKEN].
    #[arg(
        long,
        global = true,
        env = "HARBORHOOK_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Tenant id (`ten_…`) for tenant-scoped commands [env: HARBORHOOK_TENANT].
    #[arg(long, global = true, env = "HARBORHOOK_TENANT", hide_env = true)]
    pub tenant: Option<String>,
}

fn file_settings() -> Result<FileSettings, CliError> {
    let path = match std::env::var_os("HARBORHOOK_CLI_CONFIG") {
        Some(p) => std::path::PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => std::path::Path::new(&home).join(".config/harborctl/config.toml"),
            None => return Ok(FileSettings::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml_settings(&text).map_err(|e| {
            CliError::usage(format!("{}: {e}", path.display()), "fix or remove the file")
        }),
        Err(_) => Ok(FileSettings::default()),
    }
}

fn toml_settings(text: &str) -> Result<FileSettings, String> {
    use figment::providers::{Format as _, Toml};
    figment::Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| e.to_string())
}

pub struct Api {
    base: String,
    token: Option<String>,
    tenant: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(conn: &Conn) -> Result<Self, CliError> {
        let file = file_settings()?;
        let base = conn
            .url
            .clone()
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let http = shared::tls::http_client()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::failed(e.to_string(), ""))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: conn.token.clone().or(file.token),
            tenant: conn.tenant.clone().or(file.tenant),
            http,
        })
    }

    pub fn tenant(&self) -> Result<&str, CliError> {
        self.tenant.as_deref().ok_or_else(|| {
            CliError::usage(
                "this command needs a tenant",
                "pass --tenant ten_… or set HARBORHOOK_TENANT",
            )
        })
    }

    /// One API call; a non-2xx answer is an error whose hint says what to do next.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| {
            CliError::failed(
                format!("cannot reach {url}: {}", shared::error_chain(&e)),
                "is the gateway running? (`harborctl dev up` locally; set --api-url or HARBORHOOK_URL)",
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"]
            .as_str()
            .or(value["message"].as_str())
            .map_or_else(|| text.clone(), str::to_owned);
        Err(match status {
            StatusCode::UNAUTHORIZED => CliError::auth(
                format!("unauthorised: {message}"),
                "set --token or HARBORHOOK_TOKEN (locally: `harborctl token issue --tenant ten_…`)",
            ),
            StatusCode::NOT_FOUND => CliError::not_found(
                format!("not found: {message}"),
                "check the id and that it belongs to the token's tenant",
            ),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => CliError::failed(
                format!("{status}: {message}"),
                "temporary; retry in a few seconds",
            ),
            s if s.is_client_error() => {
                CliError::usage(format!("{status}: {message}"), "fix the request")
            }
            _ => CliError::failed(format!("{status}: {message}"), "see the gateway's logs"),
        })
    }
}

const ENDPOINT_COLUMNS: &[&str] = &[
    "id",
    "url",
    "enabled",
    "max_in_flight",
    "signature_scheme",
    "created_at",
];

fn list_output(json: bool, page: &Value, columns: &[&str]) {
    emit(json, page, |p| {
        let rows = p["data"].as_array().cloned().unwrap_or_default();
        let mut text = table(columns, &rows);
        if let Some(cursor) = p["next_cursor"].as_str() {
            text.push_str(&format!("\n(more: --cursor {cursor})"));
        }
        text
    });
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", urlencode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant (needs an operator token).
    Create {
        #[arg(long)]
        name: String,
    },
    Get {
        id: String,
    },
}

pub async fn tenants(api: &Api, json: bool, cmd: TenantsCommand) -> Result<(), CliError> {
    let v = match cmd {
        TenantsCommand::Create { name } => {
            api.call(Method::POST, "/v1/tenants", Some(json!({"name": name})))
                .await?
        }
        TenantsCommand::Get { id } => {
            api.call(Method::GET, &format!("/v1/tenants/{id}"), None)
                .await?
        }
    };
    emit(json, &v, block);
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum EndpointsCommand {
    /// Register an endpoint; prints its id and signing secret.
    Create {
        #[arg(long)]
        url: String,
        /// Its signing secret (`whsec_…`); generated when omitted.
        #[arg(long)]
        secret: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// `standard_webhooks` (default) or `harborhook_legacy`.
        #[arg(long)]
        scheme: Option<String>,
        /// Also sign with ed25519 (Standard Webhooks `v1a`); `endpoints public-key` shows the key.
        #[arg(long)]
        v1a: bool,
        #[arg(long)]
        max_in_flight: Option<i32>,
        #[arg(long)]
        rate_limit: Option<f64>,
        /// A custom header, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    List {
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    Get {
        id: String,
    },
    /// Change some fields (the others keep their values).
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        max_in_flight: Option<i32>,
        #[arg(long)]
        rate_limit: Option<f64>,
        /// Turn `v1a` (ed25519) signatures on (`true`) or off (`false`).
        #[arg(long)]
        v1a: Option<bool>,
    },
    /// The public keys that verify the endpoint's `v1a` signatures.
    PublicKey {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Issue a new secret; the old one keeps signing during the overlap.
    RotateSecret {
        id: String,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

fn headers_object(headers: &[String]) -> Result<Value, CliError> {
    let mut map = serde_json::Map::new();
    for h in headers {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            CliError::usage(
                format!("`{h}` is not `Name: value`"),
                "use --header 'X-Team: billing'",
            )
        })?;
        map.insert(
            name.trim().to_owned(),
            Value::String(value.trim().to_owned()),
        );
    }
    Ok(Value::Object(map))
}

pub async fn endpoints(api: &Api, json: bool, cmd: EndpointsCommand) -> Result<(), CliError> {
    let t = api.tenant()?;
    let base = format!("/v1/tenants/{t}/endpoints");
    match cmd {
        EndpointsCommand::Create {
            url,
            secret,
            description,
            scheme,
            v1a,
            max_in_flight,
            rate_limit,
            headers,
        } => {
            let mut body = json!({"url": url, "headers": headers_object(&headers)?});
            for (k, v) in [
                ("secret", secret.map(Value::from)),
                ("description", description.map(Value::from)),
                ("signature_scheme", scheme.map(Value::from)),
                ("signature_v1a", v1a.then_some(Value::Bool(true))),
                ("max_in_flight", max_in_flight.map(Value::from)),
                ("rate_limit_per_sec", rate_limit.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let created = api.call(Method::POST, &base, Some(body)).await?;
            emit(json, &created, block);
        }
        EndpointsCommand::List { limit, cursor } => {
            let q = query(&[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)]);
            let page = api.call(Method::GET, &format!("{base}{q}"), None).await?;
            list_output(json, &page, ENDPOINT_COLUMNS);
        }
        EndpointsCommand::Get { id } => {
            let e = api.call(Method::GET, &format!("{base}/{id}"), None).await?;
            emit(json, &e, block);
        }
        EndpointsCommand::Update {
            id,
            url,
            description,
            max_in_flight,
            rate_limit,
            v1a,
        } => {
            let mut body = json!({});
            for (k, v) in [
                ("url", url.map(Value::from)),
                ("description", description.map(Value::from)),
                ("max_in_flight", max_in_flight.map(Value::from)),
                ("rate_limit_per_sec", rate_limit.map(Value::from)),
                ("signature_v1a", v1a.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let e = api
                .call(Method::PATCH, &format!("{base}/{id}"), Some(body))
                .await?;
            emit(json, &e, block);
        }
        EndpointsCommand::PublicKey { id } => {
            let k = api
                .call(Method::GET, &format!("{base}/{id}/public-key"), None)
                .await?;
            emit(json, &k, block);
        }
        EndpointsCommand::Delete { id } => {
            api.call(Method::DELETE, &format!("{base}/{id}"), None)
                .await?;
            emit(json, &json!({"deleted": id}), |_| format!("deleted {id}"));
        }
        EndpointsCommand::RotateSecret { id } => {
            let r = api
                .call(
                    Method::POST,
                    &format!("{base}/{id}:rotate-secret"),
                    Some(json!({})),
                )
                .await?;
            emit(json, &r, block);
        }
        EndpointsCommand::Enable { id } => {
            let r = api
                .call(
                    Method::POST,
                    &format!("{base}/{id}:enable"),
                    Some(json!({})),
                )
                .await?;
            emit(json, &r, block);
        }
        EndpointsCommand::Disable { id, reason } => {
            let r = api
                .call(
                    Method::POST,
                    &format!("{base}/{id}:disable"),
                    Some(json!({"reason": reason})),
                )
                .await?;
            emit(json, &r, block);
        }
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum SubscriptionsCommand {
    /// Subscribe an endpoint to an event type or pattern (`invoice.*`, `*`).
    Create {
        #[arg(long)]
        endpoint: String,
        #[arg(long = "type")]
        event_type: String,
    },
    List {
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    Delete {
        id: String,
    },
}

pub async fn subscriptions(
    api: &Api,
    json: bool,
    cmd: SubscriptionsCommand,
) -> Result<(), CliError> {
    let t = api.tenant()?;
    let base = format!("/v1/tenants/{t}/subscriptions");
    match cmd {
        SubscriptionsCommand::Create {
            endpoint,
            event_type,
        } => {
            let body = json!({"endpoint_id": endpoint, "event_type": event_type});
            let s = api.call(Method::POST, &base, Some(body)).await?;
            emit(json, &s, block);
        }
        SubscriptionsCommand::List {
            endpoint,
            limit,
            cursor,
        } => {
            let q = query(&[
                ("endpoint_id", endpoint),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor),
            ]);
            let page = api.call(Method::GET, &format!("{base}{q}"), None).await?;
            list_output(
                json,
                &page,
                &["id", "endpoint_id", "event_type", "created_at"],
            );
        }
        SubscriptionsCommand::Delete { id } => {
            api.call(Method::DELETE, &format!("{base}/{id}"), None)
                .await?;
            emit(json, &json!({"deleted": id}), |_| format!("deleted {id}"));
        }
    }
    Ok(())
}

/// `events publish|list|get`.
pub async fn publish(
    api: &Api,
    json: bool,
    event_type: String,
    data: String,
    idempotency_key: Option<String>,
) -> Result<(), CliError> {
    let t = api.tenant()?;
    let payload: Value = serde_json::from_str(&data).map_err(|e| {
        CliError::usage(
            format!("--data is not JSON: {e}"),
            "pass a JSON object, e.g. '{\"id\": 1}'",
        )
    })?;
    let mut body = json!({"event_type": event_type, "payload": payload});
    if let Some(k) = idempotency_key {
        body["idempotency_key"] = Value::from(k);
    }
    let r = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{t}/events:publish"),
            Some(body),
        )
        .await?;
    emit(json, &r, block);
    Ok(())
}

pub async fn list_events(
    api: &Api,
    json: bool,
    event_type: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<(), CliError> {
    let t = api.tenant()?;
    let q = query(&[
        ("type", event_type),
        ("limit", limit.map(|l| l.to_string())),
        ("cursor", cursor),
    ]);
    let page = api
        .call(Method::GET, &format!("/v1/tenants/{t}/events{q}"), None)
        .await?;
    list_output(
        json,
        &page,
        &["id", "event_type", "created_at", "idempotency_key"],
    );
    Ok(())
}

pub async fn get_event(api: &Api, json: bool, id: &str) -> Result<(), CliError> {
    let e = api
        .call(Method::GET, &format!("/v1/events/{id}"), None)
        .await?;
    emit(json, &e, block);
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum DeliveriesCommand {
    /// The deliveries of one event.
    List {
        #[arg(long)]
        event: String,
    },
    Get {
        id: String,
    },
    /// Every attempt of a delivery.
    Attempts {
        id: String,
    },
    /// Send one delivery again (same `webhook-id`); recorded with your reason.
    Replay {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

const DELIVERY_COLUMNS: &[&str] = &["id", "endpoint_id", "status", "attempts", "updated_at"];

pub async fn deliveries(api: &Api, json: bool, cmd: DeliveriesCommand) -> Result<(), CliError> {
    match cmd {
        DeliveriesCommand::List { event } => {
            let page = api
                .call(Method::GET, &format!("/v1/events/{event}/deliveries"), None)
                .await?;
            list_output(json, &page, DELIVERY_COLUMNS);
        }
        DeliveriesCommand::Get { id } => {
            let d = api
                .call(Method::GET, &format!("/v1/deliveries/{id}"), None)
                .await?;
            emit(json, &d, block);
        }
        DeliveriesCommand::Attempts { id } => {
            let page = api
                .call(Method::GET, &format!("/v1/deliveries/{id}/attempts"), None)
                .await?;
            list_output(
                json,
                &page,
                &[
                    "attempt",
                    "started_at",
                    "duration_ms",
                    "status_code",
                    "error_class",
                ],
            );
        }
        DeliveriesCommand::Replay { id, reason } => {
            let r = api
                .call(
                    Method::POST,
                    &format!("/v1/deliveries/{id}:replay"),
                    Some(json!({"reason": reason})),
                )
                .await?;
            emit(json, &r, block);
        }
    }
    Ok(())
}
