//! The local page, `/health` and `/metrics` of the running agent: the page
//! in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/test-servers.sh`) driven through chromedriver's
//! WebDriver HTTP API, `/metrics` read by a strict parser of Prometheus'
//! text format and compared with the store, `/health` on a disk that fills
//! up, and the token.
//!
//! `EPM_SCREENSHOT=docs/page.png` makes the Chromium test save its
//! screenshot of the page there (the README shows `docs/page.png`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use epm_agent::event::{format_timestamp, Event, EventBody, PressFields};
use epm_agent::protocol::UnitId;
use epm_agent::store::Store;

use crate::backend::{Backend, Expect, Format};
use crate::servers::free_port;
use crate::support::{
    self, keypad_press, radio_press, DeviceConfig, EmulatorOptions, TestDir, COUNTERS_TIMEOUT,
};

/// The sink's bearer token: it must appear in no page and no answer.
const SINK_TOKEN: &str = "sink-token-5e5a1c2b9d";
/// The password in the second sink's URL: the same.
const URL_PASSWORD: &str = "url-password-77f1";
/// How long a press may take from the keypad to the page.
const LIVE_LIMIT: Duration = Duration::from_secs(2);
/// How long the page, chromedriver or the agent may take to come up.
const UP_TIMEOUT: Duration = Duration::from_secs(20);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

#[test]
fn the_page_in_chromium_shows_both_devices_connected_a_press_within_2_s_and_no_secret() {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: run scripts/test-servers.sh (as root) to install chromium and chromium-driver"
        );
    }
    let dir = TestDir::new();
    let days_seeded = seed_history(&dir.data_dir());
    let keypad = dir.keypad("cashdesk", EmulatorOptions::keypad());
    let receiver = dir.receiver("entrance", EmulatorOptions::receiver());
    let backend = Backend::start(Expect {
        token: Some(SINK_TOKEN.into()),
        ..Expect::plain(Format::Json)
    });
    let port = free_port();
    let keymap = DeviceConfig::keymap(&[(1, "yes"), (2, "neutral"), (3, "no")]);
    let config = dir.write_config(&[
        DeviceConfig::of(&keypad, "satisfied", keymap.clone()),
        DeviceConfig::of(&receiver, "satisfied", keymap),
    ]);
    append(
        &config,
        &format!(
            "\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[sink]]\nname = \"hq\"\nkind = \"http\"\nurl = \"{url}\"\ntoken = \"{SINK_TOKEN}\"\nflush_interval_ms = 100\n\n\
             [[sink]]\nname = \"backup\"\nkind = \"http\"\nurl = \"http://agent:{URL_PASSWORD}@127.0.0.1:{closed}/events\"\ntoken = \"{SINK_TOKEN}\"\n",
            url = backend.url(),
            closed = free_port(),
        ),
    );
    let _agent = dir.start_agent(&config, &[&keypad, &receiver]);
    let page = format!("http://127.0.0.1:{port}/");
    wait_for_http(&dir, &format!("{page}health"));

    let browser = Browser::start(&dir);
    browser.open(&page);
    let states = dir.wait_until(UP_TIMEOUT, "both devices connected on the page", || {
        let states = browser.script(
            "return Array.from(document.querySelectorAll('#devices tbody tr'))
                 .map(row => [row.dataset.device, row.querySelector('.state').dataset.state]);",
        );
        let expected = json!([["cashdesk", "connected"], ["entrance", "connected"]]);
        if states == expected {
            Ok(states)
        } else {
            Err(states.to_string())
        }
    });
    assert_eq!(states.as_array().map(Vec::len), Some(2));
    dir.wait_until(UP_TIMEOUT, "the live stream open", || {
        match browser.script("return document.body.dataset.live || null;") {
            Value::String(state) if state == "open" => Ok(()),
            other => Err(other.to_string()),
        }
    });

    let live = |device: &str| {
        browser.script(&format!(
            "return document.querySelectorAll('#presses tbody tr[data-device=\"{device}\"]').length;"
        ))
    };
    keypad.press(keypad_press(1, 7));
    let pressed = Instant::now();
    dir.wait_until(
        LIVE_LIMIT,
        "the keypad's press on the page",
        || match live("cashdesk") {
            Value::Number(count) if count.as_u64() == Some(1) => Ok(()),
            other => Err(other.to_string()),
        },
    );
    let keypad_latency = pressed.elapsed();
    receiver.press(radio_press(UnitId(0x301A_0002), 3, 11, -60, Some(80)));
    let pressed = Instant::now();
    dir.wait_until(
        LIVE_LIMIT,
        "the remote's press on the page",
        || match live("entrance") {
            Value::Number(count) if count.as_u64() == Some(1) => Ok(()),
            other => Err(other.to_string()),
        },
    );
    eprintln!(
        "press to page: keypad {keypad_latency:?}, remote {:?}",
        pressed.elapsed()
    );
    let answers = browser.script(
        "return Array.from(document.querySelectorAll('#presses tbody tr td:nth-child(5)')).map(td => td.textContent);",
    );
    assert_eq!(answers, json!(["no", "yes"]), "newest first, with answers");

    // The counts and today's index follow the presses.
    dir.wait_until(UP_TIMEOUT, "the presses counted on the page", || {
        let counted = browser.script(
            "return [Array.from(document.querySelectorAll('#devices tbody tr td:nth-child(6)')).map(td => td.textContent),
                     document.querySelector('#iel-today .interval').textContent];",
        );
        let today = counted[1].as_str().unwrap_or_default();
        if counted[0] == json!(["1", "1"]) && today.contains("2 answers") {
            Ok(())
        } else {
            Err(counted.to_string())
        }
    });

    // The chart: one dot per seeded day with answers, today's one more,
    // and the interval as a band.
    let chart = dir.wait_until(UP_TIMEOUT, "the chart drawn", || {
        let chart = browser.script(
            "return [document.querySelectorAll('#chart circle.dot').length,
                     document.querySelectorAll('#chart polygon.band').length,
                     document.querySelector('#iel-week .interval').textContent];",
        );
        match chart[0].as_u64() {
            Some(dots) if dots as usize >= days_seeded => Ok(chart),
            _ => Err(chart.to_string()),
        }
    });
    assert!(chart[1].as_u64() >= Some(1), "{chart}");
    assert!(
        chart[2]
            .as_str()
            .is_some_and(|text| text.contains("95 %") && text.contains("answers")),
        "{chart}"
    );
    dir.wait_until(UP_TIMEOUT, "the sinks on the page", || {
        let sinks = browser.script(
            "return Array.from(document.querySelectorAll('#sinks tbody tr')).map(row => [row.dataset.sink, row.querySelector('.state').dataset.state]);",
        );
        if sinks == json!([["hq", "ok"], ["backup", "retrying"]]) {
            Ok(())
        } else {
            Err(sinks.to_string())
        }
    });

    let mut served = vec![("page source".to_string(), browser.source())];
    for path in [
        "",
        "page.js",
        "page.css",
        "api/status",
        "api/report",
        "health",
        "metrics",
    ] {
        let (_, body) = get(&format!("{page}{path}"), None);
        served.push((format!("/{path}"), body));
    }
    for (what, text) in &served {
        for secret in [SINK_TOKEN, URL_PASSWORD] {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
    }
    if let Ok(path) = std::env::var("EPM_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot()).expect("write the screenshot");
        eprintln!("screenshot saved to {path}");
    }
}

#[test]
fn metrics_parse_as_prometheus_text_and_equal_the_store_after_1000_presses() {
    const PER_DEVICE: usize = 500;
    let dir = TestDir::new();
    let keypad = dir.keypad(
        "cashdesk",
        EmulatorOptions {
            max_noise_bytes: 3,
            ..EmulatorOptions::keypad()
        },
    );
    let receiver = dir.receiver("entrance", EmulatorOptions::receiver());
    let port = free_port();
    let config = dir.write_config(&[
        DeviceConfig::of(&keypad, "satisfied", DeviceConfig::keymap(&[(1, "yes")])),
        DeviceConfig::of(&receiver, "satisfied", DeviceConfig::keymap(&[(1, "yes")])),
    ]);
    append(
        &config,
        &format!(
            "\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n[[sink]]\nname = \"files\"\nkind = \"file\"\npath = \"{}\"\n",
            dir.path().join("out").display()
        ),
    );
    let _agent = dir.start_agent(&config, &[&keypad, &receiver]);
    let remotes = [UnitId(0x301A_0001), UnitId(0x301A_0002)];
    for index in 0..PER_DEVICE {
        keypad.press(keypad_press(index as u8 % 3 + 1, index as u16));
        receiver.press(radio_press(
            remotes[index % 2],
            1,
            (index / 2) as u16,
            -55,
            Some(90),
        ));
    }
    keypad.wait_until_sent(Duration::from_secs(60));
    receiver.wait_until_sent(Duration::from_secs(60));
    dir.wait_for_events(2 * PER_DEVICE, Duration::from_secs(60));
    // Counters other than presses are saved about once a second.
    dir.wait_for_device(
        "cashdesk",
        COUNTERS_TIMEOUT,
        "the line noise counted",
        |device| device.noise_bytes > 0,
    );
    dir.wait_for_device(
        "entrance",
        COUNTERS_TIMEOUT,
        "the radio copies counted",
        |device| device.duplicates >= 2 * PER_DEVICE as i64,
    );

    let url = format!("http://127.0.0.1:{port}/metrics");
    let (samples, devices) = dir.wait_until(
        Duration::from_secs(10),
        "/metrics equal to the store",
        || {
            let (status, body) = get(&url, None);
            if status != 200 {
                return Err(format!("{status}: {body}"));
            }
            let samples = parse_exposition(&body)
                .unwrap_or_else(|error| panic!("/metrics is not Prometheus text: {error}\n{body}"));
            let devices = [
                support::device_row(&dir.data_dir(), "cashdesk")?,
                support::device_row(&dir.data_dir(), "entrance")?,
            ];
            let stored = presses_per_device(&dir.data_dir());
            for device in &devices {
                let label = [("device", device.name.as_str())];
                let found = [
                    sample(&samples, "epm_agent_presses_total", &label),
                    sample(&samples, "epm_agent_duplicates_total", &label),
                    sample(&samples, "epm_agent_bad_frames_total", &label),
                    sample(&samples, "epm_agent_noise_bytes_total", &label),
                ];
                let expected = [
                    stored.get(&device.name).copied(),
                    Some(device.duplicates as f64),
                    Some(device.bad_frames as f64),
                    Some(device.noise_bytes as f64),
                ];
                if found != expected {
                    return Err(format!(
                        "{}: metrics {found:?}, store {expected:?}",
                        device.name
                    ));
                }
            }
            Ok((samples, devices))
        },
    );
    for device in &devices {
        let label = [("device", device.name.as_str())];
        assert_eq!(
            sample(&samples, "epm_agent_presses_total", &label),
            Some(PER_DEVICE as f64)
        );
        assert_eq!(sample(&samples, "epm_agent_device_up", &label), Some(1.0));
        assert_eq!(
            sample(
                &samples,
                "epm_agent_device_state",
                &[("device", device.name.as_str()), ("state", "connected")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        sample(
            &samples,
            "epm_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    for name in [
        "epm_agent_sink_pending",
        "epm_agent_sink_delivered_total",
        "epm_agent_sink_dead_letters",
    ] {
        assert!(
            sample(&samples, name, &[("sink", "files")]).is_some(),
            "{name} for the file sink"
        );
    }
    for name in [
        "epm_agent_store_size_bytes",
        "epm_agent_disk_free_bytes",
        "epm_agent_dropped_presses_total",
    ] {
        assert!(sample(&samples, name, &[]).is_some(), "{name}");
    }
    assert_eq!(
        sample(&samples, "epm_agent_dropped_presses_total", &[]),
        Some(0.0)
    );
}

#[test]
fn health_turns_503_while_the_store_cannot_be_written_and_200_when_it_can_again() {
    let dir = TestDir::new();
    let mount = dir.path().join("disk");
    // Room above the 50 MB the status rules call almost full.
    if std::env::var("EPM_TEST_FULL_DISK").is_ok_and(|kind| kind == "page-cap")
        || !crate::disk_full::mount_tmpfs_of(&mount, "96m")
    {
        eprintln!("not run: no tmpfs (mounting one needs root, or EPM_TEST_FULL_DISK=page-cap)");
        return;
    }
    let _unmount = crate::disk_full::Unmount(mount.clone());
    let data_dir = mount.join("data");
    let port = free_port();
    let config = support::simulator_config(
        dir.path(),
        &data_dir,
        &format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let _agent = dir.spawn_agent(&config);
    let url = format!("http://127.0.0.1:{port}/health");
    let url = &url;
    let health = |expected: u16| {
        move || {
            let (status, body) = get(url, None);
            if status == expected {
                Ok(body)
            } else {
                Err(format!("{status}: {body}"))
            }
        }
    };
    let body = dir.wait_until(UP_TIMEOUT, "/health 200", health(200));
    let status: Value = serde_json::from_str(&body).expect("the status JSON");
    assert_eq!(status["health"], "ok", "{body}");

    let ballast = mount.join("ballast");
    crate::disk_full::fill_to_the_last_byte(&ballast);
    // The almost-full disk alone is critical at once; the writer's own
    // word follows at its next commit.
    let body = dir.wait_until(
        UP_TIMEOUT,
        "/health 503 saying the store cannot be written",
        || {
            let body = health(503)()?;
            if body.contains("cannot be written") {
                Ok(body)
            } else {
                Err(body)
            }
        },
    );
    let status: Value = serde_json::from_str(&body).expect("the status JSON");
    assert_eq!(status["health"], "critical", "{body}");

    std::fs::remove_file(&ballast).expect("ballast removed");
    let body = dir.wait_until(Duration::from_secs(30), "/health 200 again", health(200));
    let status: Value = serde_json::from_str(&body).expect("the status JSON");
    assert_ne!(status["health"], "critical", "{body}");
}

#[test]
fn with_a_token_every_path_needs_it_and_without_one_is_refused() {
    let dir = TestDir::new();
    let port = free_port();
    let token_file = dir.path().join("page.token");
    std::fs::write(&token_file, "page-token-0c1d\n").expect("token file");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[device]]\nname = \"sim\"\nmodel = \"simulator\"\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            dir.data_dir().display(),
            token_file.display()
        ),
    )
    .expect("config");
    let _agent = dir.spawn_agent(&config);
    let base = format!("http://127.0.0.1:{port}");
    dir.wait_until(UP_TIMEOUT, "the page listening", || {
        match try_get(&format!("{base}/health"), None) {
            Ok((401, _)) => Ok(()),
            Ok((status, body)) => Err(format!("{status}: {body}")),
            Err(error) => Err(error),
        }
    });
    dir.wait_until(UP_TIMEOUT, "/health 200 with the token", || {
        match get(&format!("{base}/health"), Some("Bearer page-token-0c1d")) {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        }
    });
    for path in [
        "/",
        "/page.js",
        "/api/status",
        "/api/report",
        "/health",
        "/metrics",
    ] {
        let url = format!("{base}{path}");
        for wrong in [
            None,
            Some("Bearer page-token-0c1"),
            Some("Bearer page-token-0c1dx"),
            Some("page-token-0c1d"),
        ] {
            assert_eq!(get(&url, wrong).0, 401, "{path} with {wrong:?}");
        }
        assert_eq!(
            get(&url, Some("Bearer page-token-0c1d")).0,
            200,
            "{path} with the token"
        );
        // A browser: any user name, the token as the password.
        assert_eq!(
            get(&url, Some("Basic c2hvcDpwYWdlLXRva2VuLTBjMWQ=")).0,
            200,
            "{path} with the token as a Basic password"
        );
    }
}

#[test]
fn a_page_port_in_use_stops_the_start_saying_so() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("its address").port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[device]]\nname = \"sim\"\nmodel = \"simulator\"\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.data_dir().display(),
        ),
    )
    .expect("config");
    let output = Command::new(env!("CARGO_BIN_EXE_epm-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run epm-agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} for the local page ([http] listen)"
        )) && stderr.contains("choose another listen port"),
        "{stderr}"
    );
}

/// SIGHUP applies `[http]` like the rest: the page comes up when the table
/// is added, takes a token on the same port, moves to another port (the
/// old one closes), and goes when the table goes; the agent keeps running.
#[test]
fn a_reload_starts_moves_and_stops_the_page() {
    let dir = TestDir::new();
    let (first, second) = (free_port(), free_port());
    let config = dir.path().join("agent.toml");
    let base = format!(
        "[agent]\nid = \"t\"\ndata_dir = \"{}\"\n\n[[device]]\nname = \"sim\"\nmodel = \"simulator\"\n",
        dir.data_dir().display()
    );
    std::fs::write(&config, &base).expect("config");
    let mut agent = dir.spawn_agent(&config);
    let health = |port: u16| format!("http://127.0.0.1:{port}/health");
    let answers = |port: u16, authorization: Option<&'static str>, expected: u16| {
        let url = health(port);
        dir.wait_until(
            UP_TIMEOUT,
            &format!("{url} answering {expected}"),
            || match try_get(&url, authorization) {
                Ok((status, _)) if status == expected => Ok(()),
                Ok((status, body)) => Err(format!("{status}: {body}")),
                Err(error) => Err(error),
            },
        );
    };
    let closed = |port: u16| {
        let url = health(port);
        dir.wait_until(UP_TIMEOUT, &format!("{url} closed"), || {
            match try_get(&url, None) {
                Err(_) => Ok(()),
                Ok((status, _)) => Err(format!("still answers {status}")),
            }
        });
    };
    dir.wait_until(UP_TIMEOUT, "the agent running", || {
        let stderr = std::fs::read_to_string(dir.path().join("agent-0.stderr")).unwrap_or_default();
        stderr
            .contains("configuration applied")
            .then_some(())
            .ok_or(stderr)
    });
    closed(first);
    let reload = |http: &str| {
        std::fs::write(&config, format!("{base}{http}")).expect("config");
        agent.signal(Signal::SIGHUP);
    };

    reload(&format!("\n[http]\nlisten = \"127.0.0.1:{first}\"\n"));
    answers(first, None, 200);

    reload(&format!(
        "\n[http]\nlisten = \"127.0.0.1:{first}\"\ntoken = \"reload-token-77\"\n"
    ));
    answers(first, None, 401);
    answers(first, Some("Bearer reload-token-77"), 200);

    reload(&format!("\n[http]\nlisten = \"127.0.0.1:{second}\"\n"));
    answers(second, None, 200);
    closed(first);

    reload("");
    closed(second);
    agent.assert_running();
}

// ---------------------------------------------------------------------------

fn append(config: &Path, text: &str) {
    let mut current = std::fs::read_to_string(config).expect("read the configuration");
    current.push_str(text);
    std::fs::write(config, current).expect("write the configuration");
}

/// Presses of 20 past days in the store before the agent opens it (some
/// days with fewer than 30 answers), so the chart has a history; returns
/// how many days have answers.
fn seed_history(data_dir: &Path) -> usize {
    const DAYS: usize = 20;
    let store = Store::open_writer(data_dir).expect("create the store");
    let now = Utc::now();
    for day in 1..=DAYS {
        let answers = 10 + day * 3;
        for index in 0..answers {
            let at =
                now - chrono::Duration::days(day as i64) + chrono::Duration::seconds(index as i64);
            // Happier on some days than on others; the rest neutral.
            let answer = match (index * 7 + day * 3) % 10 {
                0..=4 => "yes",
                5..=6 => "no",
                _ => "neutral",
            };
            let id = ulid::Ulid::from_parts(at.timestamp_millis() as u64, index as u128);
            store
                .insert_fixture_event(&Event {
                    id: id.to_string(),
                    ts: format_timestamp(at),
                    tz_offset_min: 0,
                    body: EventBody::Press(PressFields {
                        device: "cashdesk".into(),
                        model: "prolan-202".into(),
                        unit: "202A0F31".into(),
                        key: 1,
                        answer: Some(answer.into()),
                        question: Some("satisfied".into()),
                        seq: (day * 100 + index) as u16,
                        rssi: None,
                        battery: None,
                        suppressed: false,
                    }),
                })
                .expect("a seeded press");
        }
    }
    DAYS
}

fn presses_per_device(data_dir: &Path) -> BTreeMap<String, f64> {
    let Ok(connection) = support::open_store(data_dir) else {
        return BTreeMap::new();
    };
    let mut statement = connection
        .prepare("SELECT device, count(*) FROM events WHERE type = 'press' GROUP BY device")
        .expect("a query");
    statement
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as f64))
        })
        .expect("presses per device")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// `GET url`, its status and body; fails the test when nothing answers.
fn get(url: &str, authorization: Option<&str>) -> (u16, String) {
    try_get(url, authorization).unwrap_or_else(|error| panic!("GET {url}: {error}"))
}

fn try_get(url: &str, authorization: Option<&str>) -> Result<(u16, String), String> {
    runtime().block_on(async {
        let mut request = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(10));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|error| error.to_string())?;
        Ok((status, body))
    })
}

fn wait_for_http(dir: &TestDir, url: &str) {
    dir.wait_until(UP_TIMEOUT, &format!("{url} answering"), || {
        try_get(url, None).map(|_| ())
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// One sample's value, by name and exactly these labels.
fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(label, value)| (label.to_string(), value.to_string()))
        .collect();
    labels.sort();
    samples.get(&(name.to_string(), labels)).copied()
}

/// Samples by name and sorted labels.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses Prometheus' text format 0.0.4 strictly: every family declared by
/// one `# TYPE` (and at most one `# HELP`) before its samples, which stand
/// together; counter names end in `_total`; names and label names as the
/// format allows; label values only with the escapes `\\`, `\"` and `\n`;
/// every value a number; no series twice; a line feed after every line.
fn parse_exposition(text: &str) -> Result<Samples, String> {
    if !text.ends_with('\n') {
        return Err("the text does not end with a line feed".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: Vec<String> = Vec::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Samples::new();
    for (number, line) in text.lines().enumerate() {
        let at = |message: String| format!("line {}: {message}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let keyword = words.next().unwrap_or("");
            let name = words.next().unwrap_or("").to_string();
            let detail = words.next().unwrap_or("");
            match keyword {
                "HELP" => {
                    if !is_metric_name(&name) || helps.contains(&name) {
                        return Err(at("a bad or repeated HELP".into()));
                    }
                    helps.push(name);
                }
                "TYPE" => {
                    let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if !is_metric_name(&name) || !known.contains(&detail) {
                        return Err(at("a bad TYPE".into()));
                    }
                    if types.insert(name.clone(), detail.to_string()).is_some() {
                        return Err(at("a second TYPE".into()));
                    }
                    if samples.keys().any(|(sampled, _)| *sampled == name) {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                    if detail == "counter" && !name.ends_with("_total") {
                        return Err(at("a counter whose name does not end in _total".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("a bad metric name".into()));
        }
        if !types.contains_key(name) {
            return Err(at("a sample without a TYPE".into()));
        }
        if current.as_deref() != Some(name) {
            if finished.iter().any(|done| done == name) {
                return Err(at("the family's samples are not together".into()));
            }
            if let Some(previous) = current.replace(name.to_string()) {
                finished.push(previous);
            }
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let close = loop {
                let Some((start, _)) = chars.peek().copied() else {
                    return Err(at("labels not closed".into()));
                };
                if inner[start..].starts_with('}') {
                    break start;
                }
                let equals = inner[start..]
                    .find("=\"")
                    .ok_or_else(|| at("a label without =\"".into()))?;
                let label = &inner[start..start + equals];
                if !is_label_name(label) {
                    return Err(at(format!("a bad label name {label:?}")));
                }
                for _ in 0..label.chars().count() + 2 {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(at("a bad escape in a label value".into())),
                        },
                        Some((_, '\n')) | None => {
                            return Err(at("a label value not closed".into()))
                        }
                        Some((_, character)) => value.push(character),
                    }
                }
                labels.push((label.to_string(), value));
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return Err(at("labels not separated by ,".into())),
                }
            };
            rest = &inner[close + 1..];
        }
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?
            .split(' ');
        let value_text = fields.next().unwrap_or("");
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            number => number
                .parse::<f64>()
                .map_err(|_| at(format!("{number:?} is not a number")))?,
        };
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .map_err(|_| at("a bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("more after the timestamp".into()));
        }
        labels.sort();
        if samples.insert((name.to_string(), labels), value).is_some() {
            return Err(at("a series twice".into()));
        }
    }
    Ok(samples)
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|character| {
            character.is_ascii_alphanumeric() || character == '_' || character == ':'
        })
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|character| character.is_ascii_alphanumeric() || character == '_')
        && !name.starts_with("__")
}

#[test]
fn the_exposition_parser_refuses_what_the_format_does_not_allow() {
    let good = "# HELP a_total An a.\n# TYPE a_total counter\na_total{x=\"1\\\"2\"} 3\na_total 4\n# TYPE b gauge\nb 0.5\n";
    let samples = parse_exposition(good).expect("valid text");
    assert_eq!(sample(&samples, "a_total", &[("x", "1\"2")]), Some(3.0));
    for bad in [
        "# TYPE a_total counter\na_total 1", // no final line feed
        "a 1\n",                             // no TYPE
        "# TYPE a counter\na 1\n",           // counter without _total
        "# TYPE a gauge\na{x=\"1} 1\n",      // value not closed
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",  // bad escape
        "# TYPE a gauge\na{1x=\"1\"} 1\n",   // bad label name
        "# TYPE a gauge\na one\n",           // not a number
        "# TYPE a gauge\na 1\na 2\n",        // a series twice
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"y\"} 1\n", // apart
        "# TYPE a gauge\n# TYPE a gauge\na 1\n", // a second TYPE
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

/// A headless Chromium driven by chromedriver's WebDriver HTTP API.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    // Removed after the browser ends.
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(dir: &TestDir) -> Browser {
        let port = free_port();
        let log = File::create(dir.path().join("chromedriver.log")).expect("a log file");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a profile folder");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            _profile: profile,
        };
        dir.wait_until(UP_TIMEOUT, "chromedriver ready", || {
            match try_get(&format!("{}/status", browser.base), None) {
                Ok((200, body)) if body.contains("\"ready\":true") => Ok(()),
                Ok((status, body)) => Err(format!("{status}: {body}")),
                Err(error) => Err(error),
            }
        });
        // Without the background-networking flags Chromium calls out at
        // start, and a closed network refuses it.
        let arguments = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,1500",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let session = browser.command(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": arguments}
            }}}),
        );
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {session}"))
            .to_string();
        browser
    }

    /// Sends a WebDriver command; its `value`.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let answer: Result<Value, String> = runtime().block_on(async {
            let client = reqwest::Client::new();
            let request = match method {
                "POST" => client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string()),
                "DELETE" => client.delete(&url),
                _ => client.get(&url),
            };
            let response = request
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|error| error.to_string())?;
            let text = response.text().await.map_err(|error| error.to_string())?;
            serde_json::from_str::<Value>(&text).map_err(|error| format!("{error}: {text}"))
        });
        let answer = answer.unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"));
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    fn session_path(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn open(&self, url: &str) {
        self.command("POST", &self.session_path("/url"), json!({ "url": url }));
    }

    fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            &self.session_path("/execute/sync"),
            json!({"script": script, "args": []}),
        )
    }

    fn source(&self) -> String {
        self.command("GET", &self.session_path("/source"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let encoded = self.command("GET", &self.session_path("/screenshot"), Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("a base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = runtime().block_on(async {
                reqwest::Client::new()
                    .delete(&url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
