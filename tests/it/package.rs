//! The Debian package's inputs, checked without building it
//! (`scripts/ci-package.sh` builds and inspects the `.deb` itself): every
//! asset `[package.metadata.deb]` names exists, the paths the package, the
//! unit and the agent's defaults use agree, and the maintainer scripts are
//! executable and valid `sh`.

use std::path::PathBuf;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deb_metadata() -> toml::Table {
    let manifest = std::fs::read_to_string(repository().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&manifest).unwrap();
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("Cargo.toml has [package.metadata.deb]")
        .clone()
}

/// (source, destination, mode) of every asset.
fn assets() -> Vec<(String, String, String)> {
    deb_metadata()["assets"]
        .as_array()
        .expect("assets is a list")
        .iter()
        .map(|asset| {
            let fields: Vec<&str> = asset
                .as_array()
                .expect("each asset is [source, destination, mode]")
                .iter()
                .map(|field| field.as_str().unwrap())
                .collect();
            let [source, destination, mode] = fields[..] else {
                panic!("asset {asset} is not [source, destination, mode]")
            };
            (source.into(), destination.into(), mode.into())
        })
        .collect()
}

fn destination_of(source: &str) -> (String, String) {
    assets()
        .into_iter()
        .find(|(asset, destination, _)| {
            asset == source && !destination.starts_with("usr/share/doc")
        })
        .map(|(_, destination, mode)| (destination, mode))
        .unwrap_or_else(|| panic!("no asset installs {source}"))
}

#[test]
fn every_asset_source_exists() {
    for (source, _, _) in assets() {
        // cargo-deb's placeholder for the binary it builds.
        if source.starts_with("target/release/") {
            continue;
        }
        let matches = if source.contains('*') {
            let (folder, pattern) = source.rsplit_once('/').unwrap();
            assert_eq!(pattern, "*", "only folder/* globs are used");
            std::fs::read_dir(repository().join(folder))
                .unwrap()
                .count()
        } else {
            usize::from(repository().join(&source).is_file())
        };
        assert!(matches > 0, "asset {source} does not exist");
    }
}

#[test]
fn the_package_installs_what_the_unit_and_the_defaults_expect() {
    assert_eq!(
        destination_of("target/release/epm-agent"),
        ("usr/bin/".to_string(), "755".to_string())
    );
    // Readable by root and the service's group only: it may hold a token.
    assert_eq!(
        destination_of("config/epm-agent.toml"),
        (
            "etc/epm-agent/epm-agent.toml".to_string(),
            "640".to_string()
        )
    );
    assert_eq!(
        destination_of("systemd/epm-agent.service").0,
        "lib/systemd/system/"
    );
    #[cfg(target_os = "linux")]
    if std::env::var_os("EPM_AGENT_CONFIG").is_none() {
        assert_eq!(
            epm_agent::config::config_path(None),
            std::path::Path::new("/etc/epm-agent/epm-agent.toml"),
            "the agent's default configuration is the packaged conffile"
        );
    }
    let unit = std::fs::read_to_string(repository().join("systemd/epm-agent.service")).unwrap();
    let exec_start = unit
        .lines()
        .find(|line| line.starts_with("ExecStart="))
        .expect("the unit has ExecStart");
    assert!(
        exec_start.starts_with("ExecStart=/usr/bin/epm-agent ")
            && exec_start.contains("--config /etc/epm-agent/epm-agent.toml"),
        "{exec_start}"
    );
    for user in ["User=epm-agent", "SupplementaryGroups=dialout"] {
        assert!(
            unit.lines().any(|line| line == user),
            "the unit lacks {user}: debian/postinst creates that user and group"
        );
    }
}

#[cfg(unix)]
#[test]
fn maintainer_scripts_are_executable_valid_sh() {
    use std::os::unix::fs::PermissionsExt;

    let folder = deb_metadata()["maintainer-scripts"]
        .as_str()
        .unwrap()
        .to_string();
    for script in ["postinst", "prerm", "postrm"] {
        let path = repository().join(&folder).join(script);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{} is not executable", path.display());
        let check = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{script} starts with #!/bin/sh"
        );
        assert!(text.contains("\nset -e\n"), "{script} sets -e");
    }
}

/// The completions and the manual page in dist/ are what this binary makes
/// (they are committed so that `cargo deb` needs no build step).
#[cfg(target_os = "linux")]
#[test]
fn the_shipped_completions_and_man_page_are_current() {
    for (arguments, file) in [
        (
            &["completions", "bash"][..],
            "dist/completions/epm-agent.bash",
        ),
        (&["completions", "zsh"][..], "dist/completions/_epm-agent"),
        (
            &["completions", "fish"][..],
            "dist/completions/epm-agent.fish",
        ),
        (&["man"][..], "dist/man/epm-agent.1"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .args(arguments)
            .output()
            .expect("run epm-agent");
        assert!(output.status.success(), "epm-agent {arguments:?}");
        let made = String::from_utf8(output.stdout).expect("text");
        assert!(
            made.contains("deadletter") && made.contains("config"),
            "{file}: the commands are in it"
        );
        let shipped = std::fs::read_to_string(repository().join(file)).unwrap_or_default();
        assert!(
            made == shipped,
            "{file} differs from `epm-agent {}`: run scripts/dist-files.sh and commit dist/",
            arguments.join(" ")
        );
        assert!(
            assets().iter().any(|(source, _, _)| source == file),
            "{file} is not among the package's assets"
        );
    }
}
