//! The signature-verification examples of docs/receiving-webhooks.md work: each code block
//! (Python, Node.js, Go, Rust, and the original scheme in Python) is taken from the document as
//! it is, run by its own language against signatures the platform's signing code makes, and
//! must accept the genuine ones (including a rotation's two signatures and the Standard Webhooks
//! reference vector) and refuse a tampered body, a wrong secret and a stale timestamp.

use std::process::Command;

use serde_json::{Value, json};
use shared::domain::SigningSecret;
use shared::signing::{legacy_signature, standard_signature};

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

fn expected(cases: &[Value]) -> Vec<bool> {
    cases.iter().map(|c| c["expect"] == true).collect()
}

/// Runs `program args… file` where `file` holds `code`; its stdout must be a JSON array of
/// booleans.
fn run(program: &str, args: &[&str], file_name: &str, code: &str) -> Vec<bool> {
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
    assert_eq!(py.len(), 2, "standard and original scheme");
    let cases = cases();
    let harness = format!(
        "{}\n{}\nimport json\ncases = json.loads({:?})\nprint(json.dumps([verify(c['secret'], \
         {{'webhook-id': c['id'], 'webhook-timestamp': c['ts'], 'webhook-signature': c['sig']}}, \
         c['body'].encode(), c['tolerance']) for c in cases]))\n",
        py[0],
        py[1],
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
        py[1],
        s = secret.expose(),
        b = String::from_utf8_lossy(body)
    );
    assert_eq!(run("python3", &[], "legacy.py", &legacy), [true, false]);
}

#[test]
fn the_node_example_works() {
    let doc = doc();
    let js = blocks(&doc, "js");
    assert_eq!(js.len(), 1);
    let cases = cases();
    let harness = format!(
        "{}\nconst cases = {};\nconsole.log(JSON.stringify(cases.map((c) => verify(c.secret, \
         {{'webhook-id': c.id, 'webhook-timestamp': c.ts, 'webhook-signature': c.sig}}, \
         Buffer.from(c.body), c.tolerance))));\n",
        js[0],
        serde_json::to_string(&cases).expect("json")
    );
    assert_eq!(run("node", &[], "verify.js", &harness), expected(&cases));
}

#[test]
fn the_go_example_works() {
    let doc = doc();
    let go = blocks(&doc, "go");
    assert_eq!(go.len(), 1);
    let cases = cases();
    let harness = format!(
        "package main\n\nimport (\n\t\"crypto/hmac\"\n\t\"crypto/sha256\"\n\t\"encoding/base64\"\n\
         \t\"encoding/json\"\n\t\"fmt\"\n\t\"net/http\"\n\t\"strconv\"\n\t\"strings\"\n\t\"time\"\n)\n\n\
         {}\nfunc main() {{\n\tvar cases []struct {{\n\t\tSecret, Id, Ts, Body, Sig string\n\
         \t\tTolerance int64\n\t}}\n\tif err := json.Unmarshal([]byte({:?}), &cases); err != nil {{\n\
         \t\tpanic(err)\n\t}}\n\tout := []bool{{}}\n\tfor _, c := range cases {{\n\
         \t\th := http.Header{{}}\n\t\th.Set(\"webhook-id\", c.Id)\n\t\th.Set(\"webhook-timestamp\", c.Ts)\n\
         \t\th.Set(\"webhook-signature\", c.Sig)\n\
         \t\tout = append(out, Verify(c.Secret, h, []byte(c.Body), time.Duration(c.Tolerance)*time.Second))\n\
         \t}}\n\tb, _ := json.Marshal(out)\n\tfmt.Println(string(b))\n}}\n",
        go[0],
        serde_json::to_string(&cases).expect("json")
    );
    assert_eq!(run("go", &["run"], "verify.go", &harness), expected(&cases));
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
