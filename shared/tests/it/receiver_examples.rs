//! The signature-verification examples of docs/receiving-webhooks.md work: each code block
//! (Python, Node.js, Go, Rust, and the original scheme in Python) is taken from the document as
//! it is, run by its own language against signatures the platform's signing code makes, and
//! must accept the genuine ones (including a rotation's two signatures and the Standard Webhooks
//! reference vector) and refuse a tampered body, a wrong secret and a stale timestamp. The
//! `v1a` (ed25519) examples get the same treatment with public keys, and the official Standard
//! Webhooks library (PyPI `standardwebhooks`) must still verify a header that carries `v1a`.

use std::process::Command;

use serde_json::{Value, json};
use shared::asymmetric::SigningKey;
use shared::domain::SigningSecret;
use shared::signing::{asymmetric_signature, legacy_signature, standard_signature};

mod rust_example {
    include!("../fixtures/verify_example.rs");

    pub fn check(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
        verify(secret, id, ts, body, header)
    }
}

fn doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/receiving-webhooks.md"
    ))
    .expect("docs/receiving-webhooks.md")
}

/// The fenced code blocks of `lang`, in document order.
fn blocks(doc: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("closed fence");
        out.push(body[..end].to_owned());
        rest = &body[end..];
    }
    out
}

/// Cases: (secret, id, timestamp, body, signature header, tolerance seconds, expected).
fn cases() -> Vec<Value> {
    let now = chrono::Utc::now().timestamp();
    let new: SigningSecret = SigningSecret::generate();
    let old: SigningSecret = SigningSecret::generate();
    let body = br#"{"event_type":"invoice.paid","amount":4200}"#;
    let id = "dlv_0190c5a1b2c37d4e8f9a0b1c2d3e4f50";
    let both = standard_signature(&[&new, &old], id, now, body);
    let only_new = standard_signature(&[&new], id, now, body);
    let text = String::from_utf8_lossy(body).into_owned();
    let case = |secret: &SigningSecret, ts: i64, body: &str, sig: &str, tol: i64, ok: bool| {
        json!({"secret": secret.expose(), "id": id, "ts": ts.to_string(), "body": body,
               "sig": sig, "tolerance": tol, "expect": ok})
    };
    vec![
        json!({"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
               "ts": "1614265330", "body": r#"{"test": 2432232314}"#,
               "sig": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
               "tolerance": 4_000_000_000_i64, "expect": true}),
        case(&new, now, &text, &only_new, 300, true),
        // An endpoint with v1a: the v1 examples pass over the v1a signatures after theirs.
        {
            let v1a = asymmetric_signature(&[&SigningKey::generate()], id, now, body);
            case(&new, now, &text, &format!("{only_new} {v1a}"), 300, true)
        },
        // During a rotation: either secret verifies the two-signature header.
        case(&old, now, &text, &both, 300, true),
        case(&new, now, &text, &both, 300, true),
        case(&new, now, &text.replace("4200", "4201"), &both, 300, false),
        case(&SigningSecret::generate(), now, &text, &both, 300, false),
        // Stale: signed ten minutes ago, five tolerated.
        {
            let then = now - 600;
            let sig = standard_signature(&[&new], id, then, body);
            case(&new, then, &text, &sig, 300, false)
        },
    ]
}

/// `v1a` cases: (public key, id, timestamp, body, signature header, tolerance, expected). Each
/// header carries the `v1` signature first, as deliveries do.
fn v1a_cases() -> Vec<Value> {
    let now = chrono::Utc::now().timestamp();
    let secret = SigningSecret::generate();
    let (new, old) = (SigningKey::generate(), SigningKey::generate());
    let body = br#"{"event_type":"invoice.paid","amount":4200}"#;
    let id = "dlv_0190c5a1b2c37d4e8f9a0b1c2d3e4f50";
    let header = |keys: &[&SigningKey], ts: i64| {
        format!(
            "{} {}",
            standard_signature(&[&secret], id, ts, body),
            asymmetric_signature(keys, id, ts, body)
        )
    };
    let text = String::from_utf8_lossy(body).into_owned();
    let case = |key: &SigningKey, ts: i64, body: &str, sig: &str, ok: bool| {
        json!({"key": key.public_key().to_string(), "id": id, "ts": ts.to_string(), "body": body,
               "sig": sig, "tolerance": 300, "expect": ok})
    };
    let both = header(&[&new, &old], now);
    vec![
        case(&new, now, &text, &header(&[&new], now), true),
        // During a rotation: either public key verifies the two-key header.
        case(&new, now, &text, &both, true),
        case(&old, now, &text, &both, true),
        case(&new, now, &text.replace("4200", "4201"), &both, false),
        case(&SigningKey::generate(), now, &text, &both, false),
        // Only `v1`: no `v1a` to check.
        case(
            &new,
            now,
            &text,
            &standard_signature(&[&secret], id, now, body),
            false,
        ),
        // Malformed and truncated signatures are refused, not a crash.
        case(&new, now, &text, "v1a,!!!! v1a,AAAA v1a,", false),
        // The signature of another timestamp.
        case(&new, now - 1, &text, &header(&[&new], now), false),
        // Stale: signed ten minutes ago, five tolerated.
        case(&new, now - 600, &text, &header(&[&new], now - 600), false),
    ]
}

fn expected(cases: &[Value]) -> Vec<bool> {
    cases.iter().map(|c| c["expect"] == true).collect()
}

/// Runs `program args… file` where `file` holds `code`; its stdout must be a JSON array of
/// booleans.
fn run(program: &str, args: &[&str], file_name: &str, code: &str) -> Vec<bool> {
    run_json(program, args, file_name, code)
}

fn run_json<T: serde::de::DeserializeOwned>(
    program: &str,
    args: &[&str],
    file_name: &str,
    code: &str,
) -> T {
    let dir = std::env::temp_dir().join(format!("hh-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(file_name);
    std::fs::write(&file, code).expect("write example");
    let out = Command::new(program)
        .args(args)
        .arg(&file)
        .env("GOCACHE", dir.join("gocache"))
        .env("GO111MODULE", "off")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/stack.sh tools installs it)"));
    assert!(
        out.status.success(),
        "{program} {file_name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn the_python_examples_work() {
    let doc = doc();
    let py = blocks(&doc, "python");
    assert_eq!(py.len(), 3, "standard, v1a and original scheme");
    let cases = cases();
    let harness = format!(
        "{}\n{}\nimport json\ncases = json.loads({:?})\nprint(json.dumps([verify(c['secret'], \
         {{'webhook-id': c['id'], 'webhook-timestamp': c['ts'], 'webhook-signature': c['sig']}}, \
         c['body'].encode(), c['tolerance']) for c in cases]))\n",
        py[0],
        py[2],
        serde_json::to_string(&cases).expect("json")
    );
    assert_eq!(run("python3", &[], "verify.py", &harness), expected(&cases));

    // The original HarborHook scheme.
    let secret = SigningSecret::generate();
    let body = br#"{"legacy":true}"#;
    let ts = 1_764_000_000_i64;
    let sig = legacy_signature(&[&secret], ts, body);
    let legacy = format!(
        "{}\n{}\nimport json\nh = {{'x-harborhook-timestamp': '{ts}', 'x-harborhook-signature': '{sig}'}}\n\
         print(json.dumps([verify_legacy('{s}', h, b'{b}'), verify_legacy('{s}', h, b'{b} ')]))\n",
        py[0],
        py[2],
        s = secret.expose(),
        b = String::from_utf8_lossy(body)
    );
    assert_eq!(run("python3", &[], "legacy.py", &legacy), [true, false]);
}

/// The Python interpreter of the stack's venv, which has `cryptography` and `standardwebhooks`.
fn stack_python() -> String {
    std::env::var("HARBORHOOK_STACK_PYTHON").unwrap_or_else(|_| {
        panic!("HARBORHOOK_STACK_PYTHON is unset: source .stack/tools.env (scripts/stack.sh tools)")
    })
}

#[test]
fn the_python_v1a_example_works() {
    let py = blocks(&doc(), "python");
    let cases = v1a_cases();
    let harness = format!(
        "{}\nimport json\ncases = json.loads({:?})\nprint(json.dumps([verify_v1a(c['key'], \
         {{'webhook-id': c['id'], 'webhook-timestamp': c['ts'], 'webhook-signature': c['sig']}}, \
         c['body'].encode(), c['tolerance']) for c in cases]))\n",
        py[1],
        serde_json::to_string(&cases).expect("json")
    );
    assert_eq!(
        run(&stack_python(), &[], "verify_v1a.py", &harness),
        expected(&cases)
    );
}

/// The official library checks `v1` and skips `v1a`: turning v1a on breaks no receiver that
/// uses it, and it still refuses a forged `v1` beside a genuine `v1a`.
#[test]
fn the_official_library_verifies_v1_beside_v1a() {
    let now = chrono::Utc::now().timestamp();
    let secret = SigningSecret::generate();
    let key = SigningKey::generate();
    let body = br#"{"n":1}"#;
    let id = "dlv_0190c5a1b2c37d4e8f9a0b1c2d3e4f50";
    let v1a = asymmetric_signature(&[&key], id, now, body);
    let genuine = format!("{} {v1a}", standard_signature(&[&secret], id, now, body));
    let forged = format!("v1,{} {v1a}", "A".repeat(43) + "=");
    let code = format!(
        "import json\nfrom standardwebhooks.webhooks import Webhook\nwh = Webhook({s:?})\n\
         def ok(sig):\n    try:\n        wh.verify({b:?}, {{'webhook-id': {id:?}, 'webhook-timestamp': '{now}', \
         'webhook-signature': sig}})\n        return True\n    except Exception:\n        return False\n\
         print(json.dumps([ok({genuine:?}), ok({forged:?}), ok({v1a:?})]))\n",
        s = secret.expose(),
        b = String::from_utf8_lossy(body),
    );
    let got: Vec<bool> = run_json(&stack_python(), &[], "official.py", &code);
    assert_eq!(got, [true, false, false], "genuine, forged v1, v1a alone");
}

#[test]
fn the_node_example_works() {
    let doc = doc();
    let js = blocks(&doc, "js");
    assert_eq!(js.len(), 2, "v1 and v1a");
    let cases = cases();
    let harness = format!(
        "{}\nconst cases = {};\nconsole.log(JSON.stringify(cases.map((c) => verify(c.secret, \
         {{'webhook-id': c.id, 'webhook-timestamp': c.ts, 'webhook-signature': c.sig}}, \
         Buffer.from(c.body), c.tolerance))));\n",
        js[0],
        serde_json::to_string(&cases).expect("json")
    );
    assert_eq!(run("node", &[], "verify.js", &harness), expected(&cases));
    let cases = v1a_cases();
    let harness = format!(
        "{}\nconst cases = {};\nconsole.log(JSON.stringify(cases.map((c) => verifyV1a(c.key, \
         {{'webhook-id': c.id, 'webhook-timestamp': c.ts, 'webhook-signature': c.sig}}, \
         Buffer.from(c.body), c.tolerance))));\n",
        js[1],
        serde_json::to_string(&cases).expect("json")
    );
    assert_eq!(
        run("node", &[], "verify_v1a.js", &harness),
        expected(&cases)
    );
}

/// A Go program around `block` that prints `check(c.Key, h, body, tolerance)` for each case;
/// `imports` are exactly the packages it uses (Go refuses unused ones).
fn go_harness(block: &str, imports: &[&str], check: &str, key: &str, cases: &[Value]) -> String {
    let imports: String = imports.iter().map(|i| format!("\t{i:?}\n")).collect();
    format!(
        "package main\n\nimport (\n{imports})\n\n{block}\nfunc main() {{\n\tvar cases []struct {{\n\
         \t\tKey string `json:\"{key}\"`\n\t\tId, Ts, Body, Sig string\n\t\tTolerance int64\n\t}}\n\
         \tif err := json.Unmarshal([]byte({:?}), &cases); err != nil {{\n\t\tpanic(err)\n\t}}\n\
         \tout := []bool{{}}\n\tfor _, c := range cases {{\n\t\th := http.Header{{}}\n\
         \t\th.Set(\"webhook-id\", c.Id)\n\t\th.Set(\"webhook-timestamp\", c.Ts)\n\
         \t\th.Set(\"webhook-signature\", c.Sig)\n\
         \t\tout = append(out, {check}(c.Key, h, []byte(c.Body), time.Duration(c.Tolerance)*time.Second))\n\
         \t}}\n\tb, _ := json.Marshal(out)\n\tfmt.Println(string(b))\n}}\n",
        serde_json::to_string(cases).expect("json")
    )
}

#[test]
fn the_go_example_works() {
    let doc = doc();
    let go = blocks(&doc, "go");
    assert_eq!(go.len(), 2, "v1 and v1a");
    let common = [
        "encoding/base64",
        "encoding/json",
        "fmt",
        "net/http",
        "strconv",
        "strings",
        "time",
    ];
    let cases = cases();
    let imports = [&["crypto/hmac", "crypto/sha256"][..], &common].concat();
    let harness = go_harness(&go[0], &imports, "Verify", "secret", &cases);
    assert_eq!(run("go", &["run"], "verify.go", &harness), expected(&cases));
    let cases = v1a_cases();
    let imports = [&["crypto/ed25519"][..], &common].concat();
    let harness = go_harness(&go[1], &imports, "VerifyV1a", "key", &cases);
    assert_eq!(
        run("go", &["run"], "verify_v1a.go", &harness),
        expected(&cases)
    );
}

#[test]
fn the_rust_example_works() {
    let doc = doc();
    let rust = blocks(&doc, "rust");
    assert_eq!(rust.len(), 1);
    // The block compiled here (fixtures/verify_example.rs) is the document's, byte for byte.
    assert_eq!(rust[0], include_str!("../fixtures/verify_example.rs"));
    let cases = cases();
    let got: Vec<bool> = cases
        .iter()
        .map(|c| {
            // The example leaves the timestamp check to the reader, as the text says.
            let fresh = c["tolerance"].as_i64() != Some(300)
                || (chrono::Utc::now().timestamp()
                    - c["ts"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0))
                .abs()
                    <= 300;
            fresh
                && rust_example::check(
                    c["secret"].as_str().unwrap_or_default(),
                    c["id"].as_str().unwrap_or_default(),
                    c["ts"].as_str().unwrap_or_default(),
                    c["body"].as_str().unwrap_or_default().as_bytes(),
                    c["sig"].as_str().unwrap_or_default(),
                )
        })
        .collect();
    assert_eq!(got, expected(&cases));
}
