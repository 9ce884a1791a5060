//! The playground in a real browser: headless Chromium (Debian's package)
//! drives the page at `/` against a real gateway with real workers, as a
//! person would: token, `a = 100`, `print(a)`, a plot, an endless loop.
//!
//! Leaves a screenshot of the page after the plot in
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

    // An endless loop with a short timeout: 504, and the page says the session was reset.
    let timeout = browser.find("#timeout").await;
    browser.type_keys(&timeout, "1").await;
    run(&browser, "while True:\n    pass").await;
    let (state, _) = finished_cell(&browser, 5).await;
    assert_eq!(state, "http-504");
    let said = message(&browser).await;
    assert!(said.contains("session was reset"), "{said}");
    // The next run gets a fresh session: `a` is gone.
    browser.clear(&timeout).await;
    run(&browser, "print(a)").await;
    let (state, text) = finished_cell(&browser, 6).await;
    assert_eq!(state, "error");
    assert!(text.contains("NameError"), "{text}");

    // On a phone-sized screen nothing needs sideways scrolling.
    browser.set_window_size(390, 844).await;
    let fits = browser
        .wait_for(
            "return window.innerWidth < 500 &&
                 document.documentElement.scrollWidth <= window.innerWidth;",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(fits, true);
    std::fs::write(
        artifact_dir().join("playground-phone.png"),
        browser.screenshot().await,
    )
    .unwrap();
    browser.quit().await;
}
