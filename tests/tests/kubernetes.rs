//! The Kubernetes manifests of `deploy/kubernetes` (phase 3 of
//! docs/scaling.md): rendered by kustomize (`kubectl kustomize`), validated
//! against the Kubernetes schemas (`kubernetes-validate --strict`, from
//! PyPI), and checked against what they must agree with: the images the
//! flake builds, the secrets docs/kubernetes.md has the operator create, and
//! the settings the API reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn render() -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy/kubernetes"))
        .output()
        .expect("kubectl (scripts/setup.sh installs kubernetes-client)");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The rendered documents as JSON, through PyYAML (which
/// kubernetes-validate brings).
fn documents(yaml: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn validate(yaml: &str, version: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", version])
        .arg(&file)
        .output()
        .expect("kubernetes-validate (scripts/setup.sh installs it from PyPI)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn workspace_version() -> String {
    let cargo: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    cargo["workspace"]["package"]["version"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_manifests_render_and_validate_against_the_kubernetes_schemas() {
    let yaml = render();
    let docs = documents(&yaml);
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "Deployment/phoenix-api",
        "Service/phoenix-api",
        "HorizontalPodAutoscaler/phoenix-api",
        "PodDisruptionBudget/phoenix-api",
        "Ingress/phoenix-api",
        "NetworkPolicy/phoenix-api",
        "DaemonSet/phoenix-agent",
    ] {
        assert!(kinds.contains(&expected.to_string()), "{kinds:?}");
    }
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "phoenix", "{d}");
        }
    }
    // The oldest and newest versions still supported upstream when this
    // was written.
    for version in ["1.30.0", "1.33.0"] {
        let (ok, text) = validate(&yaml, version);
        assert!(ok, "Kubernetes {version}:\n{text}");
        assert_eq!(
            text.matches("passed for resource").count(),
            docs.len(),
            "{text}"
        );
    }
    // The check can fail: a field no schema has, and a wrong type.
    let (ok, text) = validate(
        &yaml.replacen("  replicas: 2\n", "  replicas: 2\n  replica: 2\n", 1),
        "1.33.0",
    );
    assert!(!ok && text.contains("replica"), "{text}");
    let (ok, text) = validate(
        &yaml.replacen("containerPort: 8443", "containerPort: https", 1),
        "1.33.0",
    );
    assert!(!ok, "{text}");
}

#[test]
fn the_manifests_use_the_flakes_images_the_documented_secrets_and_the_apis_settings() {
    let docs = documents(&render());
    let version = workspace_version();
    let images = std::fs::read_to_string(root().join("nix/images.nix")).unwrap();
    let flake = std::fs::read_to_string(root().join("flake.nix")).unwrap();
    let guide = std::fs::read_to_string(root().join("docs/kubernetes.md")).unwrap();

    // Images: the names and the tag (the workspace's version) the flake builds.
    let api = kind(&docs, "Deployment", "phoenix-api");
    let agent = kind(&docs, "DaemonSet", "phoenix-agent");
    for (workload, image, package) in [
        (api, "phoenix-api", "phoenix"),
        (agent, "phoenix-agent", "phoenix-agent"),
    ] {
        assert_eq!(
            workload["spec"]["template"]["spec"]["containers"][0]["image"],
            format!("{image}:{version}")
        );
        assert!(
            images.contains(&format!("name = \"{image}\";")),
            "nix/images.nix builds {image}"
        );
        assert!(
            images.contains(&format!("tag = {package}.version;")),
            "tagged with the version"
        );
        assert!(
            guide.contains(&format!("{image}:{version}")),
            "docs/kubernetes.md names {image}:{version}"
        );
    }
    assert!(
        flake.contains("image-api = images.api;") && flake.contains("image-agent = images.agent;")
    );

    // Secrets: each one mounted is created in the guide, with every key used.
    let pods = [api, agent].map(|w| &w["spec"]["template"]["spec"]);
    for pod in pods {
        for volume in pod["volumes"].as_array().unwrap() {
            let Some(name) = volume["secret"]["secretName"].as_str() else {
                continue;
            };
            assert!(
                guide.contains(&format!("create secret generic {name} "))
                    || guide.contains(&format!("create secret tls {name} ")),
                "docs/kubernetes.md creates the secret {name}"
            );
            for item in volume["secret"]["items"].as_array().into_iter().flatten() {
                let key = item["key"].as_str().unwrap();
                assert!(
                    guide.contains(&format!("--from-file={key}")),
                    "the guide puts {key} into {name}"
                );
            }
            assert_eq!(
                volume["secret"]["defaultMode"].as_u64().map(|m| m & 0o007),
                Some(0),
                "{name} is not world-readable"
            );
        }
    }

    // Every setting given to the API is one it reads, and every file it is
    // pointed at is mounted.
    let config = std::fs::read_to_string(root().join("api/src/config.rs")).unwrap()
        + &std::fs::read_to_string(root().join("api/src/experiments/driver.rs")).unwrap();
    let container = &api["spec"]["template"]["spec"]["containers"][0];
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for env in container["env"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        if name == "RUST_LOG" {
            continue;
        }
        assert!(
            config.contains(&format!("\"{name}\"")),
            "the API reads {name}"
        );
        if let Some(path) = env["value"].as_str().filter(|v| v.starts_with('/')) {
            assert!(
                mounts.iter().any(|m| path.starts_with(m)),
                "{name}={path} is mounted: {mounts:?}"
            );
        }
    }
    // The database's CA is mounted where the URL names it.
    let configmap = kind(&docs, "ConfigMap", "phoenix-api");
    let url = configmap["data"]["database-url"].as_str().unwrap();
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let ca = url.split("sslrootcert=").nth(1).unwrap();
    assert!(
        mounts.iter().any(|m| ca.starts_with(m)),
        "{ca} in {mounts:?}"
    );

    // Hardening the SRE expects: no service account token, non-root API,
    // read-only root file systems, no capabilities.
    for pod in pods {
        assert_eq!(pod["automountServiceAccountToken"], false);
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(c["readOnlyRootFilesystem"], true);
        assert_eq!(c["allowPrivilegeEscalation"], false);
        assert_eq!(c["capabilities"]["drop"], serde_json::json!(["ALL"]));
    }
    assert_eq!(pods[0]["securityContext"]["runAsNonRoot"], true);

    // Every manifest in the folder is one kustomize renders.
    let kustomization =
        std::fs::read_to_string(root().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    for entry in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                kustomization.contains(&format!("- {name}")),
                "{name} is not in kustomization.yaml"
            );
        }
    }
}
