//! The outbound HTTPS path as production runs it (rustls, the platform verifier, the SSRF
//! resolver) against loopback TLS receivers: a certificate from the CA in
//! `delivery.extra_ca_file` is trusted and the delivery arrives signed; a certificate for the
//! same name from a CA nobody trusts is refused at the handshake, recorded as a failed attempt
//! and retried to the DLQ, never delivered; an unusable CA file stops the service at start.

use std::sync::Arc;
use std::time::Duration;

use crate::common::EndpointSpec;
use crate::common::{Receiver, World, expected_ids};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shared::ids::DeliveryId;

/// A CA of its own.
fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A server configuration with a `localhost` certificate issued by `ca`.
fn server(ca: &CertifiedIssuer<'static, KeyPair>) -> anyhow::Result<rustls::ServerConfig> {
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, ca)?;
    let chain = vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_deliveries_trust_the_configured_ca_and_nothing_else() -> anyhow::Result<()> {
    let trusted = ca("harborhook test CA")?;
    let stranger = ca("nobody's CA")?;
    let dir = std::env::temp_dir().join(format!("hh-tls-{}", shared::ids::EventId::new()));
    std::fs::create_dir_all(&dir)?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, trusted.pem())?;
    // A file that is not PEM: the service refuses to start rather than fail every delivery.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n")?;
    let mut bad = shared::testing::TestEnv::new().config;
    bad.delivery.extra_ca_file = Some(junk);
    let refused = delivery_consumer::start(bad, tokio_util::sync::CancellationToken::new()).await;
    assert!(
        refused.is_err(),
        "a CA file without a certificate is refused at start"
    );

    let mut world = World::new(|c| c.delivery.extra_ca_file = Some(ca_file.clone())).await?;
    world.start(true).await?;
    let good = Receiver::start_tls(server(&trusted)?).await?;
    let rogue = Receiver::start_tls(server(&stranger)?).await?;
    let tenant = world.tenant().await?;
    let (good_id, secrets) = world
        .endpoint(&tenant, EndpointSpec::new(good.https_url("good")))
        .await?;
    let (rogue_id, _) = world
        .endpoint(&tenant, EndpointSpec::new(rogue.https_url("rogue")))
        .await?;
    let mut events = std::collections::HashMap::new();
    for n in 0..3 {
        events.insert(n, world.publish(&tenant, n).await?);
    }

    // Over TLS, signed, each event once under its delivery id.
    let got = good.wait_for("good", 3, Duration::from_secs(30)).await?;
    let want = expected_ids(&events, &good_id);
    let mut seen: Vec<usize> = got
        .iter()
        .map(|r| {
            let id = r.header("webhook-id");
            let n = *want.get(id).expect("a delivery id of this endpoint");
            let ts: i64 = r.header("webhook-timestamp").parse().expect("timestamp");
            let expected = shared::signing::standard_signature(&[&secrets[0]], id, ts, &r.body);
            assert_eq!(r.header("webhook-signature"), expected, "signed");
            n
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2]);
    for e in events.values() {
        world
            .wait_status(e, &good_id, "delivered", Duration::from_secs(10))
            .await?;
    }

    // The stranger's certificate: every attempt fails in the handshake (1 + 2 retries on the
    // test schedule), the receiver never sees a request, and the attempts say why.
    for e in events.values() {
        let attempts = world
            .wait_status(e, &rogue_id, "dead_lettered", Duration::from_secs(60))
            .await?;
        assert_eq!(attempts, 3);
        let id = DeliveryId::derive(e, &rogue_id);
        let rows = world
            .db
            .query(
                "SELECT status_code, error_class, error FROM delivery_attempts WHERE delivery_id = $1",
                &[&id],
            )
            .await?;
        assert_eq!(rows.len(), 3);
        for r in &rows {
            let status: Option<i32> = r.get(0);
            let error: Option<String> = r.get(2);
            assert_eq!(status, None, "no HTTP answer over an untrusted connection");
            let error = error.unwrap_or_default().to_lowercase();
            assert!(error.contains("certificate"), "{error}");
        }
    }
    assert!(
        rogue.requests("rogue").is_empty(),
        "nothing reached the untrusted receiver"
    );
    let _ = std::fs::remove_dir_all(&dir);
    world.stop().await
}
