//! Files by URL end to end: `POST /files` fetches from a server, `POST
//! /files/export` uploads to one (PUT, and an S3-style presigned POST), and
//! the SSRF guard refuses every internal address before connecting.
//!
//! The only servers are this process's own, on 127.0.0.1, reached through
//! `files.url_allow`. Every refused address is refused before any connection,
//! so no traffic leaves loopback: the refusals are checked by their error and
//! by the test server seeing no extra connection.

mod common;

use common::remote::{multipart, Remote, Reply};
use common::{noise, Gateway, Options};
use serde_json::{json, Value};

const CSV: &[u8] = b"x,y\n1,2\n3,4\n5,6\n";

/// A gateway whose transfers may reach 127.0.0.1 (and nothing else internal),
/// with a 4 MiB cap and a 3 s timeout.
async fn allowed_gateway() -> Gateway {
    Gateway::start(Options {
        extra: "[files]\nurl_allow = [\"127.0.0.1/32\"]\nmax_url_bytes = 4194304\nurl_timeout_secs = 3\n".into(),
        ..Options::default()
    })
    .await
}

async fn post(gw: &Gateway, path: &str, user: &str, body: Value) -> (u16, Value) {
    gw.post(&format!("{path}?user_uuid={user}"), body).await
}

async fn fetch(gw: &Gateway, user: &str, url: &str, dir: &str, name: &str) -> (u16, Value) {
    let body = json!({"files": [{"download_url": url, "path": dir, "name": name}]});
    post(gw, "/files", user, body).await
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_by_url_is_read_and_a_plot_is_exported_by_put_and_post() {
    let gw = allowed_gateway().await;
    let remote = Remote::start().await;
    remote.file("/data/sales.csv", CSV);
    remote.redirect("/moved", "/data/sales.csv");
    let big = noise(3 * 1024 * 1024 + 123);
    remote.file("/noise.bin", &big);

    let body = json!({"files": [
        {"download_url": remote.url("/data/sales.csv"), "path": "/sandbox/data", "name": "sales.csv"},
        {"download_url": remote.url("/moved"), "path": "data", "name": "again.csv"},
        {"download_url": remote.url("/noise.bin"), "path": "/home/sandbox", "name": "noise.bin"},
    ]});
    let (status, answer) = post(&gw, "/files", "analyst", body).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer,
        json!({"success": true, "results": [
            {"full_path": "/sandbox/data/sales.csv", "size": 16},
            {"full_path": "/sandbox/data/again.csv", "size": 16},
            {"full_path": "/sandbox/noise.bin", "size": big.len()},
        ]})
    );
    // Under /api/v1 too.
    let (status, answer) = fetch(
        &gw,
        "analyst",
        &remote.url("/data/sales.csv"),
        "/home/sandbox",
        "v1.csv",
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = post(
        &gw,
        "/api/v1/files",
        "analyst",
        json!({"files": [{"download_url": remote.url("/data/sales.csv"), "path": "", "name": "v1b.csv"}]}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["results"][0]["full_path"], "/sandbox/v1b.csv");

    // A host name: resolved (from /etc/hosts, no DNS query) by the guarded
    // resolver, which keeps 127.0.0.1 (allowed) and drops ::1 (refused).
    let (status, answer) = fetch(
        &gw,
        "analyst",
        &format!("http://localhost:{}/data/sales.csv", remote.addr.port()),
        "",
        "named.csv",
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        gw.get_file("analyst", "named.csv").await,
        (200, CSV.to_vec())
    );
    assert_eq!(
        gw.get_file("analyst", "noise.bin").await,
        (200, big.clone())
    );
    let body = gw
        .run(
            "analyst",
            "import pandas as pd\ndf = pd.read_csv('data/sales.csv')\n\
             print(df['y'].sum(), pd.read_csv('data/again.csv')['x'].sum())\n\
             import os, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n\
             os.makedirs('out', exist_ok=True)\ndf.plot(x='x', y='y').get_figure().savefig('out/plot.png')",
        )
        .await;
    assert_eq!(body["result_text"], "12 9\n", "{body}");
    let (status, png) = gw.get_file("analyst", "out/plot.png").await;
    assert_eq!(status, 200);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    let fields = json!({"key": "uploads/plot.png", "policy": "eyJjb25kaXRpb25zIjpbXX0=", "x-amz-signature": "abc123"});
    let body = json!({"files": [
        {"path": "/sandbox/out", "name": "plot.png", "upload_url": remote.url("/put/plot.png?X-Amz-Signature=s")},
        {"path": "out", "name": "plot.png", "upload_url": remote.url("/bucket"), "upload_fields": fields},
        {"path": "/home/sandbox", "name": "noise.bin", "upload_url": remote.url("/put/noise.bin")},
    ]});
    let (status, answer) = post(&gw, "/api/v1/files/export", "analyst", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"success": true, "results": [
            {"path": "/sandbox/out", "name": "plot.png", "size": png.len()},
            {"path": "out", "name": "plot.png", "size": png.len()},
            {"path": "/home/sandbox", "name": "noise.bin", "size": big.len()},
        ]})
    );
    let received = remote.received();
    let put = received
        .iter()
        .find(|r| r.path == "/put/plot.png?X-Amz-Signature=s")
        .expect("the PUT arrived");
    assert_eq!(put.method, "PUT");
    assert_eq!(
        put.header("content-length"),
        Some(png.len().to_string().as_str())
    );
    assert!(put.body == png, "the PUT body is the plot's bytes");
    let form = received
        .iter()
        .find(|r| r.path == "/bucket")
        .expect("the POST arrived");
    assert_eq!(form.method, "POST");
    assert!(form.header("transfer-encoding").is_none(), "a sized body");
    let parts = multipart(form.header("content-type").unwrap(), &form.body);
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["key", "policy", "x-amz-signature", "file"]);
    assert_eq!(parts[0].2, b"uploads/plot.png");
    assert_eq!(parts[3].1.as_deref(), Some("plot.png"));
    assert!(parts[3].2 == png, "the form's file is the plot's bytes");
    let noise_put = received
        .iter()
        .find(|r| r.path == "/put/noise.bin")
        .unwrap();
    assert!(
        noise_put.body == big,
        "a file of several chunks arrives whole"
    );

    // A missing session file is 404, and nothing is sent.
    let before = remote.connections();
    let body = json!({"files": [{"path": "out", "name": "nothing.png", "upload_url": remote.url("/put/x")}]});
    let (status, answer) = post(&gw, "/files/export", "analyst", body.clone()).await;
    assert_eq!(status, 404, "{answer}");
    assert!(detail(&answer).contains("nothing.png"), "{answer}");
    let (status, answer) = post(&gw, "/files/export", "nobody", body).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(remote.connections(), before);
    // An error of the upload server is 502.
    remote.route(
        "/denied",
        Reply::Body(403, Vec::new(), b"AccessDenied".to_vec()),
    );
    let body = json!({"files": [{"path": "out", "name": "plot.png", "upload_url": remote.url("/denied")}]});
    let (status, answer) = post(&gw, "/files/export", "analyst", body).await;
    assert_eq!(status, 502, "{answer}");
    assert!(detail(&answer).contains("AccessDenied"), "{answer}");
    // A server that answers at once and stops reading does not hold the export.
    remote.route("/early", Reply::Early(403));
    let body =
        json!({"files": [{"path": "", "name": "noise.bin", "upload_url": remote.url("/early")}]});
    let started = std::time::Instant::now();
    let (status, answer) = post(&gw, "/files/export", "analyst", body).await;
    assert_eq!(status, 502, "{answer}");
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    assert_eq!(gw.run("analyst", "print(2)").await["result_text"], "2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_before_any_connection() {
    let gw = allowed_gateway().await;
    let remote = Remote::start().await;
    let port = remote.addr.port();
    remote.file("/data.csv", CSV);
    // Never connected to: each is refused as a literal, before a connection.
    let refused = [
        format!("http://127.0.0.2:{port}/data.csv"),
        format!("http://[::1]:{port}/data.csv"),
        format!("http://[::ffff:127.0.0.1]:{port}/data.csv"),
        format!("http://[::ffff:7f00:1]:{port}/data.csv"),
        format!("http://[::127.0.0.1]:{port}/data.csv"),
        format!("http://[64:ff9b::7f00:1]:{port}/data.csv"),
        format!("http://[2002:7f00:1::1]:{port}/data.csv"),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[::ffff:169.254.169.254]/latest/meta-data/".into(),
        "http://10.0.0.1/".into(),
        "http://0x0a000001/".into(),
        "http://172.16.0.1/".into(),
        "http://192.168.0.1/".into(),
        "http://100.64.0.1/".into(),
        "http://0.0.0.0/".into(),
        format!("http://0.0.0.0:{port}/data.csv"),
        "http://224.0.0.1/".into(),
        "http://255.255.255.255/".into(),
        "https://[fe80::1]/".into(),
        "https://[fc00::1]/".into(),
        "https://[ff02::1]/".into(),
        "https://[::]/".into(),
    ];
    for url in &refused {
        let (status, answer) = fetch(&gw, "guarded", url, "", "x.csv").await;
        assert_eq!(status, 422, "{url}: {answer}");
        assert!(
            detail(&answer).contains("the gateway does not connect there"),
            "{url}: {answer}"
        );
        let body = json!({"files": [{"path": "", "name": "x.csv", "upload_url": url}]});
        let (status, answer) = post(&gw, "/files/export", "guarded", body).await;
        assert_eq!(status, 422, "export to {url}: {answer}");
    }
    for url in [
        "ftp://127.0.0.1/x".to_string(),
        "file:///etc/passwd".into(),
        "gopher://127.0.0.1:70/".into(),
        "not a url".into(),
    ] {
        let (status, answer) = fetch(&gw, "guarded", &url, "", "x.csv").await;
        assert_eq!(status, 422, "{url}: {answer}");
    }
    assert_eq!(remote.connections(), 0, "a refused URL was connected to");

    // Redirects from the allowed server are checked again, each of them.
    for (path, target) in [
        (
            "/to-metadata",
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
        ("/to-loopback-v6", format!("http://[::1]:{port}/data.csv")),
        (
            "/to-other-loopback",
            format!("http://127.0.0.2:{port}/data.csv"),
        ),
        ("/to-private", "http://10.1.2.3/".into()),
        ("/to-file", "file:///etc/passwd".into()),
    ] {
        remote.redirect(path, &target);
        let (status, answer) = fetch(&gw, "guarded", &remote.url(path), "", "x.csv").await;
        assert_eq!(status, 422, "{path}: {answer}");
        assert!(
            detail(&answer).contains("redirect refused"),
            "{path}: {answer}"
        );
    }
    // One connection per redirecting request, to the allowed server only.
    assert_eq!(remote.connections(), 5);
    remote.redirect("/loop", "/loop");
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/loop"), "", "x.csv").await;
    assert_eq!(status, 502, "{answer}");
    assert!(detail(&answer).contains("redirects"), "{answer}");
    assert_eq!(
        remote.connections(),
        5 + 6,
        "the first request and 5 redirects"
    );

    // The cap: a Content-Length past it is refused before the body; a body
    // without one is counted, and the partial file is deleted.
    remote.route("/claims-big", Reply::Claims(5 * 1024 * 1024));
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/claims-big"), "", "big.bin").await;
    assert_eq!(status, 413, "{answer}");
    remote.route("/unsized-big", Reply::Unsized(5 * 1024 * 1024));
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/unsized-big"), "", "big.bin").await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        gw.get_file("guarded", "big.bin").await.0,
        404,
        "the partial file is gone"
    );
    // A fetch that fails before its first byte leaves an existing file as it was.
    remote.file("/data.csv", CSV);
    assert_eq!(
        fetch(&gw, "guarded", &remote.url("/data.csv"), "", "keep.csv")
            .await
            .0,
        201
    );
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/unsized-big"), "", "keep.csv").await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        gw.get_file("guarded", "keep.csv").await.0,
        404,
        "written in part: deleted"
    );
    assert_eq!(
        fetch(&gw, "guarded", &remote.url("/data.csv"), "", "keep.csv")
            .await
            .0,
        201
    );
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/missing"), "", "keep.csv").await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(
        gw.get_file("guarded", "keep.csv").await,
        (200, CSV.to_vec())
    );
    // An error of the remote server is 502.
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/missing"), "", "m.csv").await;
    assert_eq!(status, 502, "{answer}");
    assert!(detail(&answer).contains("404"), "{answer}");
    // A lying short body (the Content-Length says more than arrives) fails too.
    remote.route("/claims-small", Reply::Claims(1000));
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/claims-small"), "", "s.bin").await;
    assert_eq!(status, 502, "{answer}");
    // A server that never answers: 504 after files.url_timeout_secs.
    remote.route("/stall", Reply::Stall);
    let started = std::time::Instant::now();
    let (status, answer) = fetch(&gw, "guarded", &remote.url("/stall"), "", "s.bin").await;
    assert_eq!(status, 504, "{answer}");
    let waited = started.elapsed().as_secs_f64();
    assert!((2.9..10.0).contains(&waited), "answered after {waited} s");
    // The session is intact after all of that.
    assert_eq!(gw.run("guarded", "print(1)").await["result_text"], "1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_allow_list_loopback_is_refused_and_bad_input_is_422() {
    let gw = Gateway::start(Options::default()).await;
    let remote = Remote::start().await;
    remote.file("/data.csv", CSV);
    let url = remote.url("/data.csv");
    let (status, answer) = fetch(&gw, "plain", &url, "", "data.csv").await;
    assert_eq!(status, 422, "{answer}");
    assert!(detail(&answer).contains("loopback"), "{answer}");
    let body = json!({"files": [{"path": "", "name": "data.csv", "upload_url": url}]});
    let (status, answer) = post(&gw, "/files/export", "plain", body).await;
    assert_eq!(status, 422, "{answer}");
    // A name for loopback (localhost is in /etc/hosts: no DNS query).
    let named = format!("http://localhost:{}/data.csv", remote.addr.port());
    let (status, answer) = fetch(&gw, "plain", &named, "", "data.csv").await;
    assert_eq!(status, 422, "{answer}");
    assert!(detail(&answer).contains("loopback"), "{answer}");
    assert_eq!(remote.connections(), 0);

    let item = |url: &str, path: &str, name: &str| json!({"download_url": url, "path": path, "name": name});
    let many: Vec<Value> = (0..101).map(|i| item(&url, "", &format!("f{i}"))).collect();
    let cases = [
        (json!({"files": []}), "1 to 100"),
        (json!({"files": many}), "1 to 100"),
        (
            json!({"files": [item(&url, "/etc", "x")]}),
            "outside the work directory",
        ),
        (
            json!({"files": [item(&url, "/home/sandbox/../etc", "x")]}),
            "'..'",
        ),
        (json!({"files": [item(&url, "../x", "x")]}), "'..'"),
        (
            json!({"files": [item(&url, "", "a/b")]}),
            "one path component",
        ),
        (
            json!({"files": [item(&url, "", "..")]}),
            "one path component",
        ),
        (json!({"files": [item(&url, "", "")]}), "one path component"),
        (
            json!({"files": [item("ftp://127.0.0.1/x", "", "x")]}),
            "only http and https",
        ),
        (
            json!({"files": [{"path": "", "name": "x"}]}),
            "download_url",
        ),
        (json!({"nothing": true}), "files"),
    ];
    for (body, expected) in cases {
        for route in ["/files", "/api/v1/files"] {
            let (status, answer) = post(&gw, route, "plain", body.clone()).await;
            assert_eq!(status, 422, "{body:.200}: {answer}");
            assert!(detail(&answer).contains(expected), "{body:.200}: {answer}");
        }
    }
    let export = |path: &str, name: &str, fields: Value| json!({"files": [{"path": path, "name": name, "upload_url": url, "upload_fields": fields}]});
    for (body, expected) in [
        (json!({"files": []}), "1 to 100"),
        (
            export("/tmp", "x", Value::Null),
            "outside the work directory",
        ),
        (export("", "../x", Value::Null), "one path component"),
        (export("", "x", json!({"file": "x"})), "upload_fields"),
        (export("", "x", json!({"a": "b\r\nc"})), "upload_fields"),
    ] {
        let (status, answer) = post(&gw, "/files/export", "plain", body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(detail(&answer).contains(expected), "{body}: {answer}");
    }
    // No user.
    let (status, answer) = gw.post("/files", json!({"files": []})).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(remote.connections(), 0, "nothing was sent anywhere");
    // None of it started a session.
    assert_eq!(gw.status().await["sessions"], 0);
}
