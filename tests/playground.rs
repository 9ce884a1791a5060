//! The playground in a real browser: headless Chromium (Debian's package)
//! drives the page at `/` against a real gateway with real workers, as a
//! person would: token, `a = 100`, `print(a)`, a plot, a CSV uploaded through
//! the files panel and read with pandas, a file the code wrote downloaded, a
//! loop whose lines appear while it runs, Stop, an endless loop.
//!
//! Leaves a screenshot of the page after the streamed loop in
//! `target/test-artifacts/playground.png` (and one at phone size beside it).

mod common;
#[path = "playground/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use common::{Gateway, Options};
use webdriver::{Browser, CONTROL, ENTER, RELEASE_MODIFIERS};

const PLOT: &str = "import numpy as np
import matplotlib.pyplot as plt
x = np.linspace(0, 4 * np.pi, 400)
plt.plot(x, np.sin(x), label='sin')
plt.plot(x, np.cos(x), label='cos')
plt.legend()
plt.title('Hello from code-interpreter')
plt.show()";

const SALES_CSV: &str = "month,sales\nJan,120\nFeb,135\nMar,160\nApr,150\n";
const PANDAS: &str = "import pandas as pd
df = pd.read_csv('sales.csv')
df[df.sales > 130].to_csv('best.csv', index=False)
print('total', df.sales.sum())
df.describe()";
const LOOP: &str = "import time
for i in range(3):
    print(i, flush=True)
    time.sleep(1)";

/// Waits until the page shows `n` finished cells; returns the newest one's
/// state (`ok`, `error` or `http-<status>`) and text.
async fn finished_cell(browser: &Browser, n: usize) -> (String, String) {
    let script = format!(
        "const cells = document.querySelectorAll('#history .cell');
         if (cells.length !== {n} || cells[0].dataset.state === 'running') return null;
         return [cells[0].dataset.state, cells[0].innerText];"
    );
    let value = browser.wait_for(&script, Duration::from_secs(60)).await;
    (
        value[0].as_str().unwrap().to_string(),
        value[1].as_str().unwrap().to_string(),
    )
}

/// Replaces the editor's code and runs it with the Run button.
async fn run(browser: &Browser, code: &str) {
    let editor = browser.find("#code").await;
    browser.clear(&editor).await;
    browser.type_keys(&editor, code).await;
    browser.click(&browser.find("#run").await).await;
}

async fn message(browser: &Browser) -> String {
    let text = browser
        .script("return document.getElementById('message').textContent;")
        .await;
    text.as_str().unwrap().to_string()
}

fn artifact_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: keep artifacts beside it.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_code_and_sees_a_plot() {
    let gw = Gateway::start(Options {
        min_idle: 1,
        max_workers: 2,
        // The first matplotlib import is slow on a loaded machine.
        timeout_secs: 60.0,
        ..Options::default()
    })
    .await;
    gw.wait_idle(1, Duration::from_secs(60)).await;
    let browser = Browser::start(1000, 1500).await;
    browser.goto(&format!("{}/", gw.url)).await;

    // Without the token, the page says what to do.
    run(&browser, "1").await;
    let (state, _) = finished_cell(&browser, 1).await;
    assert_eq!(state, "http-401");
    assert!(message(&browser).await.contains("token was refused"));

    let token = browser.find("#token").await;
    browser.type_keys(&token, &gw.token).await;

    // State persists: Ctrl+Enter in the editor runs `a = 100` …
    let editor = browser.find("#code").await;
    browser.clear(&editor).await;
    browser
        .type_keys(
            &editor,
            &format!("a = 100{CONTROL}{ENTER}{RELEASE_MODIFIERS}"),
        )
        .await;
    let (state, text) = finished_cell(&browser, 2).await;
    assert_eq!(state, "ok", "{text}");
    // … and `print(a)` sees it.
    run(&browser, "print(a)").await;
    let (state, text) = finished_cell(&browser, 3).await;
    assert_eq!(state, "ok");
    let stdout = browser
        .script("return document.querySelector('#history .cell pre.stdout').textContent;")
        .await;
    assert_eq!(stdout, "100\n", "cell: {text}");

    // A plot arrives as an <img> holding a decoded PNG.
    run(&browser, PLOT).await;
    let (state, text) = finished_cell(&browser, 4).await;
    assert_eq!(state, "ok", "{text}");
    let size = browser
        .wait_for(
            "const img = document.querySelector('#history .cell img');
             return img && img.complete && img.naturalWidth > 0
                 ? [img.naturalWidth, img.naturalHeight, img.src.slice(0, 22)] : null;",
            Duration::from_secs(10),
        )
        .await;
    assert!(size[1].as_u64().unwrap() > 0, "{size}");
    assert_eq!(size[2], "data:image/png;base64,");

    // A CSV chosen in the files panel is uploaded into the session; pandas reads it.
    let dir = std::env::temp_dir().join(format!("ci-upload-{}", common::random_tag()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("sales.csv");
    std::fs::write(&csv, SALES_CSV).unwrap();
    let picker = browser.find("#upload").await;
    browser.type_keys(&picker, csv.to_str().unwrap()).await;
    let note = browser
        .wait_for(
            "const t = document.getElementById('files-note').textContent;
             return t.startsWith('Uploaded') ? t : null;",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        note.as_str().unwrap().contains("sales.csv (44 B)"),
        "{note}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    run(&browser, PANDAS).await;
    let (state, text) = finished_cell(&browser, 5).await;
    assert_eq!(state, "ok", "{text}");
    assert!(text.contains("total 565"), "{text}");
    assert!(text.contains("mean"), "describe() shown: {text}");
    // The list shows the upload and the file the code wrote; Download fetches
    // it with the token header and saves it through a Blob URL.
    let listed = browser
        .wait_for(
            "const names = [...document.querySelectorAll('#files .name')].map(n => n.textContent);
             return names.includes('best.csv') ? names : null;",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(listed, serde_json::json!(["best.csv", "sales.csv"]));
    browser
        .script(
            "window.savedBlob = null;
             const original = URL.createObjectURL;
             URL.createObjectURL = (blob) => {
               blob.text().then((text) => { window.savedBlob = text; });
               return original.call(URL, blob);
             };",
        )
        .await;
    browser
        .click(
            &browser
                .find("#files button[aria-label='Download best.csv']")
                .await,
        )
        .await;
    let saved = browser
        .wait_for("return window.savedBlob;", Duration::from_secs(10))
        .await;
    assert_eq!(saved, "month,sales\nFeb,135\nMar,160\nApr,150\n");
    // … and the browser saved it as a file, under its own name.
    let file = browser.downloads().join("best.csv");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !file.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_default(),
        "month,sales\nFeb,135\nMar,160\nApr,150\n"
    );

    // A loop that prints once a second: line 0 is on the page while it still runs.
    run(&browser, LOOP).await;
    let seen = browser
        .wait_for(
            "const cell = document.querySelector('#history .cell');
             const out = cell.querySelector('pre.stdout');
             if (cell.dataset.state !== 'running') return ['finished', cell.innerText];
             return out && out.textContent.startsWith('0') ? ['running', out.textContent] : null;",
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        seen[0], "running",
        "the run ended before a line showed: {seen}"
    );
    assert_eq!(seen[1], "0\n", "{seen}");
    let (state, _) = finished_cell(&browser, 6).await;
    assert_eq!(state, "ok");
    let stdout = browser
        .script("return document.querySelector('#history .cell pre.stdout').textContent;")
        .await;
    assert_eq!(stdout, "0\n1\n2\n");

    // The status panel has figures once a token is known.
    let status = browser
        .wait_for(
            "const t = document.getElementById('status').innerText;
             return t.includes('workers') ? t : null;",
            Duration::from_secs(10),
        )
        .await;
    assert!(status.as_str().unwrap().contains("podman"), "{status}");
    let screenshot = browser.screenshot().await;
    assert!(screenshot.starts_with(b"\x89PNG"));
    let path = artifact_dir().join("playground.png");
    std::fs::write(&path, &screenshot).unwrap();
    eprintln!("screenshot: {}", path.display());

    // Stop closes the stream: the kernel is interrupted and the session kept.
    run(&browser, "import time\nwhile True:\n    time.sleep(0.1)").await;
    browser
        .wait_for(
            "return !document.getElementById('stop').disabled;",
            Duration::from_secs(10),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser.click(&browser.find("#stop").await).await;
    let (state, _) = finished_cell(&browser, 7).await;
    assert_eq!(state, "stopped");
    run(&browser, "print(a)").await;
    let (state, text) = finished_cell(&browser, 8).await;
    assert_eq!(state, "ok", "{text}");
    assert!(text.contains("100"), "the session survived Stop: {text}");

    // An endless loop with a short timeout: 504, and the page says the session was reset.
    let timeout = browser.find("#timeout").await;
    browser.type_keys(&timeout, "1").await;
    run(&browser, "while True:\n    pass").await;
    let (state, _) = finished_cell(&browser, 9).await;
    assert_eq!(state, "http-504");
    let said = message(&browser).await;
    assert!(said.contains("session was reset"), "{said}");
    // The next run gets a fresh session: `a` is gone.
    browser.clear(&timeout).await;
    run(&browser, "print(a)").await;
    let (state, text) = finished_cell(&browser, 10).await;
    assert_eq!(state, "error");
    assert!(text.contains("NameError"), "{text}");

    // On a phone-sized screen nothing needs sideways scrolling.
    browser.set_window_size(390, 844).await;
    let fits = browser
        .wait_for(
            "if (window.innerWidth >= 500) return null;
             if (document.documentElement.scrollWidth <= window.innerWidth) return true;
             return [...document.querySelectorAll('body *')]
                 .filter((e) => e.getBoundingClientRect().right > window.innerWidth)
                 .map((e) => `${e.tagName}#${e.id}.${e.className}`).join(' ');",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(fits, true, "wider than the screen: {fits}");
    std::fs::write(
        artifact_dir().join("playground-phone.png"),
        browser.screenshot().await,
    )
    .unwrap();
    browser.quit().await;
}
