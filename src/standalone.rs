//! `ferry standalone`: load Connection/Transport manifests from files and run them in one
//! local worker, without Kubernetes. Files are read again when they change (edit
//! `suspended: true` and save to suspend); a file that no longer validates changes nothing.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use crate::{
    api::{
        manifest::parse_documents,
        validate::{ManifestValidator, Resource},
    },
    transport::runtime::TransportRuntime,
    worker::{Worker, key},
};

/// Used when no `--manifests` are given: a transport delivering to `ferry sink`'s default
/// address.
pub const EMBEDDED_DEFAULT: &str = include_str!("../examples/standalone.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {object} is defined twice (also in {first})")]
    Duplicate {
        path: String,
        object: String,
        first: String,
    },
}

/// One object from the manifests, with where it came from.
pub struct Loaded {
    pub source: String,
    pub resource: Resource,
}

/// The files named by `paths` (directories: their .yaml, .yml and .json files, sorted).
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestsError> {
    let mut files = Vec::new();
    for path in paths {
        let read_err = |e: std::io::Error| ManifestsError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            std::fs::metadata(path).map_err(read_err)?;
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Parse and validate every document; all problems are reported, not only the first.
pub fn load(
    sources: &[(String, String)],
    validator: &ManifestValidator,
) -> Result<Vec<Loaded>, Vec<ManifestsError>> {
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut errors = Vec::new();
    for (source, text) in sources {
        let docs = match parse_documents(text) {
            Ok(docs) => docs,
            Err(e) => {
                errors.push(ManifestsError::Invalid {
                    path: source.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        for doc in docs {
            match validator.validate(&defaulted_namespace(doc)) {
                Ok(resource) => {
                    let object = describe(&resource);
                    if let Some(first) = seen.get(&object) {
                        errors.push(ManifestsError::Duplicate {
                            path: source.clone(),
                            object,
                            first: first.clone(),
                        });
                        continue;
                    }
                    seen.insert(object, source.clone());
                    loaded.push(Loaded {
                        source: source.clone(),
                        resource,
                    });
                }
                Err(e) => errors.push(ManifestsError::Invalid {
                    path: source.clone(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// As kubectl does with no namespace in the file and none in the context.
fn defaulted_namespace(mut doc: Value) -> Value {
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace")
            .or_insert_with(|| Value::String("default".into()));
    }
    doc
}

/// `Transport default/orders-sink`
pub fn describe(resource: &Resource) -> String {
    let (kind, meta) = match resource {
        Resource::Transport(t) => ("Transport", &t.metadata),
        Resource::Connection(c) => ("Connection", &c.metadata),
    };
    format!(
        "{kind} {}",
        key(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default()
        )
    )
}

fn read_sources(files: &[PathBuf]) -> Result<Vec<(String, String)>, ManifestsError> {
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|text| (f.display().to_string(), text))
                .map_err(|e| ManifestsError::Read {
                    path: f.display().to_string(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Host what the manifests define; answers what is hosted now.
pub async fn apply(worker: &Arc<Worker>, loaded: Vec<Loaded>) -> Vec<Arc<TransportRuntime>> {
    let mut hosted = Vec::new();
    for item in loaded {
        let object = describe(&item.resource);
        match item.resource {
            Resource::Transport(t) => match worker.host_transport(*t, None).await {
                Ok((runtime, created)) => {
                    if created {
                        println!(
                            "{object}: {} (send transactions to {})",
                            runtime.state(),
                            runtime.report().endpoint
                        );
                        watch_state(object, &runtime);
                    }
                    hosted.push(runtime);
                }
                Err(e) => eprintln!("{}: {e}", item.source),
            },
            Resource::Connection(_) => {
                eprintln!(
                    "{}: {object} skipped: this build of ferry hosts transports only",
                    item.source
                )
            }
        }
    }
    hosted
}

/// Print every state change of a transport.
fn watch_state(object: String, runtime: &Arc<TransportRuntime>) {
    let mut states = runtime.watch_state();
    let mut last = *states.borrow_and_update();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let now = *states.borrow_and_update();
            if now != last {
                println!("{object}: {last} -> {now}");
                last = now;
            }
        }
    });
}

/// Load, validate and host; then follow the files. Errors at start-up stop everything.
pub async fn start(worker: &Arc<Worker>, paths: &[PathBuf]) -> Result<(), Vec<ManifestsError>> {
    let validator = ManifestValidator::new();
    let (files, sources) = if paths.is_empty() {
        (
            vec![],
            vec![("(embedded default)".to_owned(), EMBEDDED_DEFAULT.to_owned())],
        )
    } else {
        let files = manifest_files(paths).map_err(|e| vec![e])?;
        let sources = read_sources(&files).map_err(|e| vec![e])?;
        (files, sources)
    };
    let loaded = load(&sources, &validator)?;
    apply(worker, loaded).await;
    if !files.is_empty() {
        tokio::spawn(follow(worker.clone(), files, validator));
    }
    Ok(())
}

fn modified(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Apply the files again whenever one changes.
async fn follow(worker: Arc<Worker>, files: Vec<PathBuf>, validator: ManifestValidator) {
    let mut seen = modified(&files);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = modified(&files);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = read_sources(&files)
            .map_err(|e| vec![e])
            .and_then(|sources| load(&sources, &validator));
        match loaded {
            Ok(loaded) => {
                println!("manifests changed: applying them");
                apply(&worker, loaded).await;
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                eprintln!("manifests not applied: nothing was changed");
            }
        }
    }
}
