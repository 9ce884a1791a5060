//! The file API end to end: uploads reach the code at once, files the code
//! writes can be downloaded, sizes are bounded, and every path trick is refused.

mod common;

use std::time::Instant;

use common::{noise, Gateway, Options};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_file_round_trips_byte_for_byte() {
    let gw = Gateway::start(Options::default()).await;
    let data = noise(50 * 1024 * 1024);
    let started = Instant::now();
    let (status, body) = gw.put_file("carrier", "big/blob.bin", data.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["size"], data.len());
    let uploaded = started.elapsed();
    let (status, back) = gw.get_file("carrier", "big/blob.bin").await;
    assert_eq!(status, 200);
    eprintln!(
        "50 MiB: upload {uploaded:?}, download {:?}",
        started.elapsed() - uploaded
    );
    assert!(back == data, "downloaded bytes differ");
    let seen = gw
        .run(
            "carrier",
            "import os; print(os.path.getsize('big/blob.bin'))",
        )
        .await;
    assert_eq!(seen["result_text"], format!("{}\n", data.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_reads_uploads_and_writes_downloads() {
    let gw = Gateway::start(Options::default()).await;
    let csv = b"x,y\n1,2\n3,4\n5,6\n".to_vec();
    assert_eq!(gw.put_file("analyst", "data.csv", csv).await.0, 200);
    let body = gw
        .run(
            "analyst",
            "import pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df['x'].sum())\n\
             import matplotlib.pyplot as plt\ndf.plot(x='x', y='y').get_figure().savefig('out/chart.png')",
        )
        .await;
    // The directory does not exist yet: the plot fails, the sum printed.
    assert!(
        body["result_text"].as_str().unwrap().starts_with("9\n"),
        "{body}"
    );
    gw.run(
        "analyst",
        "import os; os.makedirs('out'); plt.gcf().savefig('out/chart.png')",
    )
    .await;
    let (status, png) = gw.get_file("analyst", "out/chart.png").await;
    assert_eq!(status, 200);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    let listing: Value = gw
        .http()
        .get(format!("{}/files?user_uuid=analyst", gw.url))
        .header("X-Auth-Token", &gw.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["data.csv", "out/chart.png"], "{listing}");
    assert_eq!(listing["files"][0]["size"], 16);
    assert!(listing["files"][0]["modified"].is_number());

    let deleted = gw
        .http()
        .delete(format!("{}/files/data.csv?user_uuid=analyst", gw.url))
        .header("X-Auth-Token", &gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(gw.get_file("analyst", "data.csv").await.0, 404);
    // The session's state is untouched by file operations.
    assert_eq!(
        gw.run("analyst", "print(len(df))").await["result_text"],
        "3\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_trick_is_refused() {
    let gw = Gateway::start(Options::default()).await;
    gw.run(
        "trickster",
        "import os\nos.symlink('/etc/passwd', 'pw')\nos.symlink('/etc', 'etc')\nos.mkfifo('fifo')\n\
         os.makedirs('real'); os.symlink('/tmp', 'real/tmp')",
    )
    .await;
    for path in [
        // (URL libraries resolve a literal or %2e%2e segment client-side; these
        // keep one segment that the gateway decodes into a path with ..)
        "..%2F..%2Fetc%2Fpasswd", // ..
        "a%2F%2E%2E%2Fb",         // .. in the middle
        "%2Fetc%2Fpasswd",        // absolute
        "pw",                     // symlink to a file outside
        "etc/passwd",             // through a symlinked directory
        "real/tmp/x",             // a symlink deeper down
        "fifo",                   // not a regular file
        "a%00b",                  // NUL
        "real",                   // a directory
    ] {
        let (status, body) = gw.get_file("trickster", path).await;
        assert_eq!(
            status,
            400,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        let (status, body) = gw.put_file("trickster", path, b"x".to_vec()).await;
        assert_eq!(status, 400, "PUT {path}: {body}");
    }
    // Nothing was written through the links.
    let check = gw
        .run("trickster", "import os; print(os.path.exists('/tmp/x'))")
        .await;
    assert_eq!(check["result_text"], "False\n");
    // No session, no files: 404, and no session is created by looking.
    assert_eq!(gw.get_file("nobody", "x").await.0, 404);
    assert_eq!(gw.status().await["sessions"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_disk_limit_are_413() {
    let gw = Gateway::start(Options {
        extra: "[limits]\ndisk_mb = 16\n".into(),
        ..Options::default()
    })
    .await;
    let (status, body) = gw
        .put_file("hoarder", "huge.bin", noise(20 * 1024 * 1024))
        .await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = gw.put_file("hoarder", "fits.bin", noise(1024 * 1024)).await;
    assert_eq!(status, 200);
}
