//! Headless Chromium through ChromeDriver (Debian's `chromium` and
//! `chromium-driver`), driven synchronously: the harness's HTTP client is
//! blocking, the WebDriver client async. For the console's tests and its
//! benchmark; axe-core (`vendor/axe-core`) checks a page's accessibility.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::Locator;
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use serde_json::{Value, json};

use crate::free_port;

/// ChromeDriver and one headless Chromium session, driven synchronously
/// (the harness's HTTP client is blocking; the browser's is async).
pub struct Browser {
    driver: Child,
    runtime: tokio::runtime::Runtime,
    client: fantoccini::Client,
    shots: PathBuf,
    axe: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.runtime.block_on(client.close());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/setup.sh installs it)");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("acceptInsecureCerts".into(), json!(true));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000"]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            // ChromeDriver speaks plain HTTP on loopback.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let attempt = runtime.block_on(
                fantoccini::ClientBuilder::new(connector)
                    .capabilities(capabilities.clone())
                    .connect(&url),
            );
            match attempt {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("no WebDriver session: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        };
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let axe = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vendor/axe-core/axe.min.js"),
        )
        .unwrap();
        Browser {
            driver,
            runtime,
            client,
            shots,
            axe,
        }
    }

    pub fn goto(&self, url: &str) {
        self.runtime.block_on(self.client.goto(url)).unwrap();
    }

    pub fn url(&self) -> String {
        self.runtime
            .block_on(self.client.current_url())
            .unwrap()
            .to_string()
    }

    pub fn find(&self, css: &str) -> Element {
        self.wait_for(Locator::Css(css), css)
    }

    /// Waits up to 20 s for an element `locator` finds; `what` names it in
    /// the failure.
    fn wait_for(&self, locator: Locator<'_>, what: &str) -> Element {
        self.runtime
            .block_on(
                self.client
                    .wait()
                    .at_most(Duration::from_secs(20))
                    .for_element(locator),
            )
            .unwrap_or_else(|e| self.fail(&format!("no {what}: {e}")))
    }

    /// Finds the element `locator` finds and does `act` to it. A page that
    /// redraws the element between finding it and acting on it (a stale
    /// element reference) has it found again, up to five times.
    fn on<T, F>(&self, locator: Locator<'_>, what: &str, act: impl Fn(Element) -> F) -> T
    where
        F: Future<Output = Result<T, CmdError>>,
    {
        let mut last = None;
        for _ in 0..5 {
            match self.runtime.block_on(act(self.wait_for(locator, what))) {
                Ok(done) => return done,
                Err(e) if e.is_stale_element_reference() => last = Some(e),
                Err(e) => self.fail(&format!("{what}: {e}")),
            }
        }
        self.fail(&format!("{what} kept being redrawn: {last:?}"))
    }

    /// Panics with `why`, the page's URL and text, after saving a
    /// screenshot of it as `failure.png`.
    pub fn fail(&self, why: &str) -> ! {
        if let Ok(png) = self.runtime.block_on(self.client.screenshot()) {
            let _ = std::fs::write(self.shots.join("failure.png"), png);
        }
        let source = self
            .runtime
            .block_on(self.client.source())
            .unwrap_or_default();
        panic!("{why} on {}; the page:\n{source}", self.url())
    }

    pub fn fill(&self, css: &str, text: &str) {
        self.on(Locator::Css(css), css, |e| async move {
            e.clear().await?;
            e.send_keys(text).await
        });
    }

    pub fn click(&self, css: &str) {
        self.on(Locator::Css(css), css, |e| async move { e.click().await });
    }

    /// Clicks the button whose text is `label`.
    pub fn click_button(&self, label: &str) {
        let xpath = format!("//button[normalize-space(.)='{label}']");
        let what = format!("button {label}");
        self.on(
            Locator::XPath(&xpath),
            &what,
            |e| async move { e.click().await },
        );
    }

    /// The text of the element `css` finds.
    pub fn text(&self, css: &str) -> String {
        self.on(Locator::Css(css), css, |e| async move { e.text().await })
    }

    pub fn script(&self, js: &str) -> Value {
        self.runtime
            .block_on(self.client.execute(js, vec![]))
            .unwrap()
    }

    /// The text of `css` now, if it is there (a page being replaced has
    /// none).
    pub fn try_text(&self, css: &str) -> Option<String> {
        self.runtime.block_on(async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.text().await.ok()
        })
    }

    /// Waits until `css`'s text satisfies `f`, across reloads; its text.
    pub fn wait_text(&self, css: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(text) = self.try_text(css) {
                if f(&text) {
                    return text;
                }
                last = text;
            }
            if Instant::now() > deadline {
                self.fail(&format!("{css} never matched; last: {last}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn screenshot(&self, name: &str) {
        let png = self.runtime.block_on(self.client.screenshot()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.runtime
            .block_on(self.client.set_window_size(width, height))
            .unwrap();
    }

    /// axe-core's serious and critical violations on the current page.
    pub fn accessibility_violations(&self) -> Vec<Value> {
        self.script(&format!("{}\nreturn true;", self.axe));
        let found = self
            .runtime
            .block_on(self.client.execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then((r) => done(JSON.stringify(r.violations)), (e) => done(JSON.stringify([{ id: 'axe-error', impact: 'critical', help: String(e) }])));",
                vec![],
            ))
            .unwrap();
        let all: Vec<Value> = serde_json::from_str(found.as_str().unwrap()).unwrap();
        all.into_iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .collect()
    }

    /// Checks the page with axe-core and saves its screenshot.
    pub fn check(&self, name: &str) {
        self.screenshot(name);
        let violations = self.accessibility_violations();
        assert!(
            violations.is_empty(),
            "{name}: {}",
            serde_json::to_string_pretty(&violations).unwrap()
        );
    }
}
