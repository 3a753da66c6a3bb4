//! The Kubernetes manifests of `deploy/k8s/` (a kustomize base and one overlay per Redis mode).
//!
//! - `every_overlay_renders_with_the_key_properties`: each overlay is rendered here (no kustomize
//!   binary is needed: the kustomizations use only `resources`, `namespace` and `images`, and the
//!   renderer below refuses anything else) and checked: readiness on `/readyz` and liveness on
//!   `/healthz` of the public port, a termination grace longer than the preStop pause plus the
//!   drain (`SHUTDOWN_GRACE_SECS`), the PodDisruptionBudget and HorizontalPodAutoscaler aimed at
//!   the Deployment, the Prometheus scrape annotations of the metrics port, the ingress's cookie
//!   affinity, the Secret and the overlay's Redis settings (exactly one mode of §7). Every YAML
//!   file of `deploy/k8s/` is a resource of some kustomization, or the secret example.
//! - `manifests_validate_against_the_kubernetes_schemas`: every manifest file through
//!   `kubernetes-validate --strict` (PyPI, pinned in `tests/py/k8s-requirements.txt`; it bundles
//!   the schemas and works offline) for the pinned Kubernetes versions, in a venv under `target/`
//!   (`pyenv`); a broken manifest must fail it (so the validator really validates). Without
//!   python3/venv it fails under `CI=true` and is reported as skipped elsewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value as Yaml;

use crate::harness::repo_root;
use crate::pyenv::{describe, require_python, venv};

/// The Kubernetes versions the manifests are validated against: the oldest and the newest that
/// the pinned kubernetes-validate bundles and that we claim (autoscaling/v2 and policy/v1 are
/// GA in all of them).
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// The overlays and the Redis settings (docs/protocol.md §7) each must set, exactly.
const OVERLAYS: &[(&str, &[&str])] = &[
    ("single-redis", &["REDIS_URL"]),
    ("sentinel", &["REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"]),
    ("cluster", &["REDIS_CLUSTER_NODES"]),
];

/// Every Redis mode setting of §7: an overlay sets those of its mode and no other.
const REDIS_MODE_SETTINGS: &[&str] = &[
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_CLUSTER_NODES",
];

const SECRET_EXAMPLE: &str = "base/secret.example.yaml";

fn k8s_dir() -> PathBuf {
    let dir = repo_root().join("deploy").join("k8s");
    dir.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn rel(path: &Path) -> String {
    let root = repo_root().canonicalize().unwrap_or_else(|_| repo_root());
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The YAML documents of a file (a file may hold several, `---` between them).
fn docs(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            Yaml::deserialize(d).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", rel(path)))
        })
        .filter(|d| !d.is_null())
        .collect()
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_default()
}

/// Every `*.yaml` under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", rel(dir))) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// What rendering a kustomization gives: the objects, and the files it used.
#[derive(Default)]
struct Rendered {
    objects: Vec<Yaml>,
    files: BTreeSet<PathBuf>,
}

/// Renders the kustomization in `dir` as `kubectl apply -k` would, for the subset of kustomize
/// the manifests use: `resources` (files and directories with a kustomization), `namespace` and
/// `images`. Any other field fails the test, so that a kustomization using more is not silently
/// misread here.
fn render(dir: &Path) -> Rendered {
    let path = dir.join("kustomization.yaml");
    assert!(path.is_file(), "{} has no kustomization.yaml", rel(dir));
    let k = docs(&path).into_iter().next().expect("a kustomization");
    assert_eq!(
        s(&k["apiVersion"]),
        "kustomize.config.k8s.io/v1beta1",
        "{}",
        rel(&path)
    );
    assert_eq!(s(&k["kind"]), "Kustomization", "{}", rel(&path));
    for key in k.as_mapping().expect("a mapping").keys() {
        assert!(
            ["apiVersion", "kind", "resources", "namespace", "images"].contains(&s(key)),
            "{}: field {key:?} is not understood by tests/it/k8s.rs's renderer: extend it",
            rel(&path)
        );
    }
    let mut out = Rendered::default();
    out.files.insert(path.clone());
    for r in k["resources"].as_sequence().expect("resources") {
        let target = dir
            .join(s(r))
            .canonicalize()
            .unwrap_or_else(|e| panic!("{}: resource {}: {e}", rel(&path), s(r)));
        if target.is_dir() {
            let sub = render(&target);
            out.objects.extend(sub.objects);
            out.files.extend(sub.files);
        } else {
            out.objects.extend(docs(&target));
            out.files.insert(target);
        }
    }
    if let Some(ns) = k["namespace"].as_str() {
        for o in &mut out.objects {
            if s(&o["kind"]) != "Namespace" {
                o["metadata"]["namespace"] = Yaml::from(ns);
            }
        }
    }
    if let Some(images) = k["images"].as_sequence() {
        for o in &mut out.objects {
            let Some(containers) = o["spec"]["template"]["spec"]["containers"].as_sequence_mut()
            else {
                continue;
            };
            for c in containers {
                let current = s(&c["image"]).to_owned();
                let name = current.split([':', '@']).next().unwrap_or_default();
                if let Some(i) = images.iter().find(|i| s(&i["name"]) == name) {
                    let new_name = i["newName"].as_str().unwrap_or(name);
                    let tag = i["newTag"].as_str().expect("images[].newTag");
                    c["image"] = Yaml::from(format!("{new_name}:{tag}"));
                }
            }
        }
    }
    out
}

/// The one object of `kind` (and `name`, when given) in `objects`.
fn one<'a>(objects: &'a [Yaml], kind: &str, name: Option<&str>, overlay: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects
        .iter()
        .filter(|o| s(&o["kind"]) == kind && name.is_none_or(|n| s(&o["metadata"]["name"]) == n))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{overlay}: expected one {kind} {name:?}, found {}",
        found.len()
    );
    found[0]
}

/// `port` of a probe or backend: a number, or the name of a container port.
fn container_port(container: &Yaml, port: &Yaml) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    container["ports"]
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| p["name"] == *port))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port:?}"))
}

fn env_value<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// Whether every label of `want` (a non-empty mapping) is in `labels`.
fn subset(want: &Yaml, labels: &Yaml) -> bool {
    let want = want.as_mapping().expect("a label mapping");
    !want.is_empty() && want.iter().all(|(k, v)| labels[s(k)] == *v)
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    subset(&selector["matchLabels"], labels)
}

fn check_overlay(overlay: &str, redis_settings: &[&str]) -> BTreeSet<PathBuf> {
    let dir = k8s_dir().join("overlays").join(overlay);
    let Rendered { objects, files } = render(&dir);

    for o in &objects {
        let kind = s(&o["kind"]);
        let ns = s(&o["metadata"]["namespace"]);
        assert!(
            kind == "Namespace" || ns == "fanout",
            "{overlay}: {kind} {} is in namespace {ns:?}, not fanout",
            s(&o["metadata"]["name"])
        );
    }
    one(&objects, "Namespace", Some("fanout"), overlay);

    // The Deployment: probes, grace, scrape annotations, secrets and settings.
    let deploy = one(&objects, "Deployment", None, overlay);
    let name = s(&deploy["metadata"]["name"]);
    let spec = &deploy["spec"];
    let template = &spec["template"];
    assert!(
        labels_match(&spec["selector"], &template["metadata"]["labels"]),
        "{overlay}: the Deployment's selector does not match its pods"
    );
    let containers = template["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "{overlay}: one container per pod");
    let c = &containers[0];
    assert!(
        s(&c["image"]).contains(':'),
        "{overlay}: image {:?} has no tag",
        c["image"]
    );
    let public = env_value(c, "PORT").map_or(3000, |p| p.parse().expect("PORT"));
    let admin = env_value(c, "ADMIN_PORT").map_or(9100, |p| p.parse().expect("ADMIN_PORT"));
    assert_eq!((public, admin), (3000, 9100), "{overlay}: ports of §7");
    let readiness = &c["readinessProbe"]["httpGet"];
    assert_eq!(
        s(&readiness["path"]),
        "/readyz",
        "{overlay}: readiness probe"
    );
    assert_eq!(
        container_port(c, &readiness["port"]),
        public,
        "{overlay}: readiness port"
    );
    let liveness = &c["livenessProbe"]["httpGet"];
    assert_eq!(
        s(&liveness["path"]),
        "/healthz",
        "{overlay}: liveness probe"
    );
    assert_eq!(
        container_port(c, &liveness["port"]),
        public,
        "{overlay}: liveness port"
    );

    let drain: u64 =
        env_value(c, "SHUTDOWN_GRACE_SECS").map_or(10, |v| v.parse().expect("SHUTDOWN_GRACE_SECS"));
    let pause: u64 = match c["lifecycle"]["preStop"]["exec"]["command"].as_sequence() {
        Some(cmd) if cmd.first().is_some_and(|a| a == "sleep") => {
            s(&cmd[1]).parse().expect("preStop sleep seconds")
        }
        Some(cmd) => panic!("{overlay}: preStop {cmd:?} is not `sleep <secs>`"),
        None => 0,
    };
    let grace = template["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > pause + drain,
        "{overlay}: terminationGracePeriodSeconds {grace} must exceed the preStop pause {pause} \
         + SHUTDOWN_GRACE_SECS {drain}"
    );

    let annotations = &template["metadata"]["annotations"];
    assert_eq!(s(&annotations["prometheus.io/scrape"]), "true", "{overlay}");
    assert_eq!(
        s(&annotations["prometheus.io/port"]),
        admin.to_string(),
        "{overlay}"
    );
    assert_eq!(
        s(&annotations["prometheus.io/path"]),
        "/metrics",
        "{overlay}"
    );
    assert!(
        c["resources"]["requests"]["cpu"].as_str().is_some(),
        "{overlay}: the HPA's CPU utilization needs a CPU request"
    );

    // envFrom: the secret (created by the operator, from the example) and the Redis settings.
    let env_from = c["envFrom"].as_sequence().expect("envFrom");
    let secret_ref = env_from
        .iter()
        .find_map(|e| e["secretRef"]["name"].as_str())
        .expect("a secretRef");
    let example = docs(&k8s_dir().join(SECRET_EXAMPLE));
    let example = one(&example, "Secret", Some(secret_ref), SECRET_EXAMPLE);
    for key in ["JWT_SECRET", "API_KEY"] {
        let v = s(&example["stringData"][key]);
        assert!(
            v.contains("REPLACE-ME"),
            "{SECRET_EXAMPLE}: {key} must be an obvious placeholder, is {v:?}"
        );
        assert!(
            env_value(c, key).is_none(),
            "{overlay}: {key} must come from the Secret, not a literal"
        );
    }
    let config_refs: Vec<&str> = env_from
        .iter()
        .filter_map(|e| e["configMapRef"]["name"].as_str())
        .collect();
    let mut settings = BTreeSet::new();
    for name in &config_refs {
        let cm = one(&objects, "ConfigMap", Some(name), overlay);
        for k in cm["data"].as_mapping().expect("ConfigMap data").keys() {
            settings.insert(s(k).to_owned());
        }
    }
    let redis: BTreeSet<String> = settings
        .iter()
        .filter(|k| REDIS_MODE_SETTINGS.contains(&k.as_str()))
        .cloned()
        .collect();
    let want: BTreeSet<String> = redis_settings.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        redis, want,
        "{overlay}: the Redis settings of its mode, and only those"
    );

    // PDB and HPA aimed at the Deployment.
    let labels = &template["metadata"]["labels"];
    let pdb = one(&objects, "PodDisruptionBudget", None, overlay);
    assert_eq!(s(&pdb["apiVersion"]), "policy/v1", "{overlay}");
    assert!(
        labels_match(&pdb["spec"]["selector"], labels),
        "{overlay}: the PDB does not select the pods"
    );
    let hpa = one(&objects, "HorizontalPodAutoscaler", None, overlay);
    assert_eq!(s(&hpa["apiVersion"]), "autoscaling/v2", "{overlay}");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (s(&target["kind"]), s(&target["name"])),
        ("Deployment", name),
        "{overlay}"
    );
    let min = hpa["spec"]["minReplicas"].as_u64().expect("minReplicas");
    assert!(
        min >= 2,
        "{overlay}: minReplicas {min}: one node is no cluster"
    );
    if let Some(max_unavailable) = pdb["spec"]["maxUnavailable"].as_u64() {
        assert!(
            max_unavailable < min,
            "{overlay}: the PDB allows every pod down"
        );
    }

    // Services: the public one on the public port; the ingress routes only to it, with cookie
    // affinity.
    let services: Vec<&Yaml> = objects
        .iter()
        .filter(|o| s(&o["kind"]) == "Service")
        .collect();
    for svc in &services {
        assert!(
            subset(&svc["spec"]["selector"], labels),
            "{overlay}: Service {} does not select the pods",
            s(&svc["metadata"]["name"])
        );
    }
    let ingress = one(&objects, "Ingress", None, overlay);
    let ann = &ingress["metadata"]["annotations"];
    assert_eq!(
        s(&ann["nginx.ingress.kubernetes.io/affinity"]),
        "cookie",
        "{overlay}"
    );
    assert!(
        ann["nginx.ingress.kubernetes.io/session-cookie-name"].is_string(),
        "{overlay}: the affinity cookie has a name"
    );
    let mut routes = 0;
    for rule in ingress["spec"]["rules"].as_sequence().expect("rules") {
        for p in rule["http"]["paths"].as_sequence().expect("paths") {
            routes += 1;
            assert!(
                "/socket.io/".starts_with(s(&p["path"])),
                "{overlay}: ingress path {:?} does not carry /socket.io/",
                p["path"]
            );
            let backend = &p["backend"]["service"];
            let svc = one(&objects, "Service", Some(s(&backend["name"])), overlay);
            let port = svc["spec"]["ports"]
                .as_sequence()
                .expect("ports")
                .iter()
                .find(|sp| {
                    sp["name"] == backend["port"]["name"] || sp["port"] == backend["port"]["number"]
                })
                .expect("the ingress backend's port on the Service");
            assert_eq!(
                container_port(c, &port["targetPort"]),
                public,
                "{overlay}: the ingress must reach the public port only, never {admin}"
            );
        }
    }
    assert!(routes > 0, "{overlay}: the ingress routes nothing");
    files
}

#[test]
fn every_overlay_renders_with_the_key_properties() {
    let overlays_dir = k8s_dir().join("overlays");
    let present: BTreeSet<String> = std::fs::read_dir(&overlays_dir)
        .expect("deploy/k8s/overlays")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = OVERLAYS.iter().map(|(o, _)| o.to_string()).collect();
    assert_eq!(
        present, listed,
        "the overlays in deploy/k8s/overlays and in this test"
    );

    let mut used = BTreeSet::new();
    for (overlay, settings) in OVERLAYS {
        used.extend(check_overlay(overlay, settings));
    }
    used.insert(k8s_dir().join(SECRET_EXAMPLE));
    for file in yaml_files(&k8s_dir()) {
        assert!(
            used.contains(&file),
            "{} is in no kustomization (and is not the secret example)",
            rel(&file)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_validate_against_the_kubernetes_schemas() {
    let test = "k8s::manifests_validate_against_the_kubernetes_schemas";
    if !require_python(test) {
        return;
    }
    let bin = venv(
        "k8s",
        repo_root()
            .join("tests")
            .join("py")
            .join("k8s-requirements.txt"),
    )
    .await;
    let validator = bin.join("kubernetes-validate");
    let manifests: Vec<PathBuf> = yaml_files(&k8s_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    assert!(manifests.len() >= 8, "manifests: {manifests:?}");

    // A broken Deployment must fail: the validator is not a no-op.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: three\n  \
         selectr: {}\n",
    )
    .expect("write broken.yaml");

    tokio::task::spawn_blocking(move || {
        for version in KUBERNETES_VERSIONS {
            let out = Command::new(&validator)
                .args(["--strict", "-k", version])
                .args(&manifests)
                .current_dir(repo_root())
                .output()
                .expect("run kubernetes-validate");
            println!("kubernetes-validate {version}:\n{}", describe(&out));
            assert!(
                out.status.success(),
                "deploy/k8s does not validate against Kubernetes {version}\n{}",
                describe(&out)
            );
            let passed = String::from_utf8_lossy(&out.stdout)
                .matches(" passed ")
                .count();
            assert_eq!(
                passed,
                manifests.len(),
                "one `passed` line per manifest\n{}",
                describe(&out)
            );

            let out = Command::new(&validator)
                .args(["--strict", "-k", version])
                .arg(&broken)
                .output()
                .expect("run kubernetes-validate");
            assert!(
                !out.status.success(),
                "kubernetes-validate {version} accepted a broken Deployment\n{}",
                describe(&out)
            );
        }
    })
    .await
    .expect("validation task");
}
