//! Just enough of the W3C WebDriver protocol to drive Debian's headless
//! Chromium through chromedriver: open a page, find, type, click, run a
//! script, take a screenshot. Plain JSON over reqwest, no extra crate.
//!
//! Everything started here is ended by `Drop`, even when a test fails
//! (`quit` first closes Chromium gracefully on the normal path):
//! chromedriver runs in its own process group (killed as a group), any
//! Chromium process that still names our profile directory is killed by pid,
//! and the profile directory is removed.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key WebDriver uses to name an element in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// WebDriver's codes for keys that have no character.
pub const CONTROL: char = '\u{E009}';
pub const ENTER: char = '\u{E007}';
/// Releases every modifier key pressed so far.
pub const RELEASE_MODIFIERS: char = '\u{E000}';

pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium
    /// session with a fresh profile and a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: scripts/test.sh installs Debian's chromium and chromium-driver"
            );
        }
        let tag = super::common::random_tag();
        let profile = std::env::temp_dir().join(format!("ci-chromium-{tag}"));
        std::fs::create_dir_all(&profile).unwrap();
        let port = super::common::free_port();
        let log = std::fs::File::create(profile.join("chromedriver.log")).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting chromedriver");
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            profile,
        };
        browser.wait_ready().await;
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", browser.profile.join("data").display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                // Downloads land in the profile, which Drop removes.
                "prefs": {
                    "download.default_directory": browser.downloads(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let session = browser.command("POST", "/session", capabilities).await;
        let id = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = self.http.get(format!("{}/status", self.base)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer: {}", self.driver_log());
    }

    /// One WebDriver command; returns its `value`, panics with the driver's error.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = self.http.request(method.parse().unwrap(), &url);
        let request = if method == "GET" {
            request
        } else {
            request.json(&body)
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let reply: Value = response.json().await.expect("WebDriver answers JSON");
        if !status.is_success() {
            panic!(
                "WebDriver {method} {path} failed ({status}): {}\n{}",
                reply["value"]["message"],
                self.driver_log()
            );
        }
        reply["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url})).await;
    }

    /// The element that `css` selects (the first one).
    pub async fn find(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        match found[ELEMENT_KEY].as_str() {
            Some(id) => id.to_string(),
            None => panic!("no element for {css}: {found}"),
        }
    }

    pub async fn clear(&self, element: &str) {
        self.command("POST", &format!("/element/{element}/clear"), json!({}))
            .await;
    }

    /// Types `text` into `element` as key presses.
    pub async fn type_keys(&self, element: &str, text: &str) {
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({"text": text}),
        )
        .await;
    }

    pub async fn click(&self, element: &str) {
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub async fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until it returns something other than null or false.
    pub async fn wait_for(&self, script: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.script(script).await;
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("waited {within:?} for: {script}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resizes the window (the viewport is a little smaller).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// A PNG of the visible page.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .expect("a base64 screenshot")
    }

    /// Ends the session (chromedriver closes Chromium and reaps its processes);
    /// `Drop` then stops chromedriver and removes the profile.
    pub async fn quit(self) {
        let _ = self
            .http
            .delete(&self.base)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
    }

    /// Where the browser saves downloads.
    pub fn downloads(&self) -> PathBuf {
        self.profile.join("downloads")
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.join("chromedriver.log")).unwrap_or_default()
    }

    /// Pids of processes whose command line names our profile directory.
    fn chromium_pids(&self) -> Vec<u32> {
        let needle = self.profile.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        for _ in 0..20 {
            let pids = self.chromium_pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
