//! Job files for the schedulers clusters already run: a Slurm job array
//! with the merge chained after it, and a Kubernetes Indexed Job with a
//! merge Job. charter writes them and never holds credentials; the user
//! (or `--submit`) hands them to `sbatch` or `kubectl`.

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use crate::error::{Error, Result};
use crate::file::{BuildPlan, StageOp};

/// Slurm's default `MaxArraySize`: array indices run from 0 to one less.
pub const SLURM_MAX_ARRAY_SIZE: u32 = 1001;

/// Seconds before a time limit (or preemption) at which the job is asked
/// to stop: charter commits what it has and exits, and a requeued task
/// resumes from its journals.
const GRACE_SECONDS: u32 = 120;

/// What a launcher asks of the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Shards the build is split into.
    pub shards: u32,
    /// Shards running at once (Slurm's `%K`, a Job's `parallelism`).
    pub max_parallel: Option<u32>,
    /// CPUs per shard.
    pub cpus: Option<u32>,
    /// Memory per shard (`16G`, `16Gi`).
    pub mem: Option<String>,
    /// The charter executable on the nodes (a path, or a name on `PATH`).
    pub charter: String,
}

/// Slurm specifics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmLaunch {
    /// The partition.
    pub partition: Option<String>,
    /// Time limit per task (`HH:MM:SS`, `D-HH`).
    pub time: Option<String>,
    /// The cluster's `MaxArraySize`: larger builds are split into several
    /// arrays whose indices are offset.
    pub max_array_size: u32,
}

/// Kubernetes specifics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sLaunch {
    /// The container image holding charter.
    pub image: String,
    /// The read-write-many PersistentVolumeClaim holding the build directory.
    pub claim: String,
    /// Where the volume is mounted: by default the deepest directory
    /// holding everything the build reads and writes, so the build file's
    /// paths mean the same in the container.
    pub mount: Option<PathBuf>,
    /// Retries per shard (`backoffLimitPerIndex`).
    pub retries: u32,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// A shell word, single-quoted when it needs to be.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A name for the build's jobs: `charter-<build file stem>`, lowercase
/// letters, digits and dashes, short enough for a Kubernetes name with a suffix.
fn job_name(plan: &BuildPlan) -> String {
    let stem = plan
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = format!("charter-{stem}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(50);
    name.trim_end_matches('-').to_string()
}

fn check(plan: &BuildPlan, launch: &Launch) -> Result<()> {
    if launch.shards == 0 {
        return Err(Error::Settings("--shards must be at least 1".into()));
    }
    if launch.max_parallel == Some(0) {
        return Err(Error::Settings("--max-parallel must be at least 1".into()));
    }
    // Fails when nothing can be sharded.
    plan.for_shard(charter_table::Shard::new(0, launch.shards)?)?;
    Ok(())
}

/// A bash script that submits the shards as Slurm job arrays (several,
/// with offset indices, when there are more shards than `MaxArraySize`)
/// and the merge as a job that runs once every array has succeeded.
pub fn slurm_script(plan: &BuildPlan, launch: &Launch, slurm: &SlurmLaunch) -> Result<String> {
    check(plan, launch)?;
    if slurm.max_array_size < 2 {
        return Err(Error::Settings(
            "--max-array-size must be at least 2".into(),
        ));
    }
    let file = absolute(&plan.file)?;
    let out = absolute(&plan.out)?;
    let logs = out.join("shards");
    let name = job_name(plan);
    let n = launch.shards;
    let mut directives = vec![format!(
        "#SBATCH --output={}/slurm-%x-%A_%a.out",
        logs.display()
    )];
    if let Some(p) = &slurm.partition {
        directives.push(format!("#SBATCH --partition={p}"));
    }
    if let Some(c) = launch.cpus {
        directives.push(format!("#SBATCH --cpus-per-task={c}"));
    }
    if let Some(m) = &launch.mem {
        directives.push(format!("#SBATCH --mem={m}"));
    }
    if let Some(t) = &slurm.time {
        directives.push(format!("#SBATCH --time={t}"));
    }
    let directives = directives.join("\n");
    let file_q = quote(&file.display().to_string());
    let mut s = format!(
        r#"#!/bin/bash
# {file}, split into {n} shards: Slurm job arrays run `charter build --shard I/{n}`,
# then one job merges the shards and runs the global stages.
#
#   bash THIS_SCRIPT        # prints the job ids
#
# {out} must be on storage every node mounts (NFS, Lustre, …).
# Submitting again reruns only what is missing: finished shards are cached.
# Set CHARTER to the charter executable on the nodes.
set -euo pipefail
export CHARTER="${{CHARTER:-{charter}}}"
mkdir -p {logs}
arrays=""
"#,
        file = file.display(),
        out = out.display(),
        charter = launch.charter,
        logs = quote(&logs.display().to_string()),
    );
    let size = slurm.max_array_size;
    let mut first = 0u32;
    while first < n {
        let count = (n - first).min(size);
        let throttle = launch
            .max_parallel
            .map_or(String::new(), |k| format!("%{k}"));
        s += &format!(
            r#"
# Shards {first}–{last}.
id=$(sbatch --parsable --array=0-{top}{throttle} --export=ALL,CHARTER_SHARD_OFFSET={first} <<'EOF'
#!/bin/bash
#SBATCH --job-name={name}
{directives}
#SBATCH --signal=B:TERM@{GRACE_SECONDS}
#SBATCH --requeue
#SBATCH --open-mode=append
exec "$CHARTER" build {file_q} --shard "$((SLURM_ARRAY_TASK_ID + CHARTER_SHARD_OFFSET))/{n}"
EOF
)
arrays="$arrays:${{id%%;*}}"
"#,
            last = first + count - 1,
            top = count - 1,
        );
        first += count;
    }
    s += &format!(
        r#"
# The merge, once every shard has succeeded.
merge=$(sbatch --parsable --dependency="afterok$arrays" <<'EOF'
#!/bin/bash
#SBATCH --job-name={name}-merge
{directives}
#SBATCH --signal=B:TERM@{GRACE_SECONDS}
exec "$CHARTER" build {file_q} --merge --shards {n}
EOF
)
echo "shards: ${{arrays#:}}"
echo "merge: ${{merge%%;*}}"
"#
    );
    Ok(s)
}

/// Every path the build reads or writes.
fn paths(plan: &BuildPlan) -> Vec<PathBuf> {
    let mut all = vec![plan.file.clone(), plan.out.clone()];
    for s in &plan.stages {
        all.push(s.output.clone());
        all.extend(s.model.clone());
        all.extend(s.constitution.clone());
        match &s.op {
            StageOp::Import { files, .. } => all.extend(files.iter().cloned()),
            StageOp::Eval(e) => all.extend([e.a.clone(), e.b.clone()]),
            StageOp::Train(t) => {
                all.extend(t.reference_cache.clone());
                all.extend(t.rl.as_ref().and_then(|rl| rl.reward_cache.clone()));
            }
            _ => {}
        }
    }
    all
}

/// The deepest directory holding every path the build reads or writes.
fn common_root(plan: &BuildPlan) -> Result<PathBuf> {
    let mut root: Option<PathBuf> = None;
    for p in paths(plan) {
        let p = absolute(&p)?;
        root = Some(match root {
            None => p.parent().map(Path::to_path_buf).unwrap_or(p),
            Some(r) => {
                let mut r = r;
                while !p.starts_with(&r) {
                    if !r.pop() {
                        break;
                    }
                }
                r
            }
        });
    }
    Ok(root.unwrap_or_else(|| PathBuf::from("/")))
}

/// Kubernetes manifests: an Indexed Job whose pods run one shard each
/// (`JOB_COMPLETION_INDEX`) and a suspended merge Job to resume once the
/// shards' Job is complete, as one YAML stream.
pub fn k8s_manifests(plan: &BuildPlan, launch: &Launch, k8s: &K8sLaunch) -> Result<String> {
    check(plan, launch)?;
    let file = absolute(&plan.file)?;
    let mount = match &k8s.mount {
        Some(m) => absolute(m)?,
        None => common_root(plan)?,
    };
    let name = job_name(plan);
    let n = launch.shards;
    let file_q = quote(&file.display().to_string());
    let charter = quote(&launch.charter);
    let mut resources = serde_json::Map::new();
    if let Some(c) = launch.cpus {
        resources.insert("cpu".into(), json!(c.to_string()));
    }
    if let Some(m) = &launch.mem {
        resources.insert("memory".into(), json!(m));
    }
    let pod = |container: &str, command: String| {
        json!({
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": GRACE_SECONDS,
                "containers": [{
                    "name": container,
                    "image": k8s.image,
                    "command": ["/bin/sh", "-c", command],
                    "resources": { "requests": resources, "limits": resources },
                    "volumeMounts": [{ "name": "build", "mountPath": mount.display().to_string() }],
                }],
                "volumes": [{
                    "name": "build",
                    "persistentVolumeClaim": { "claimName": k8s.claim },
                }],
            }
        })
    };
    let shards = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": format!("{name}-shards"), "labels": { "app.kubernetes.io/name": name } },
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": launch.max_parallel.unwrap_or(n).min(n),
            "backoffLimitPerIndex": k8s.retries,
            "template": pod(
                "shard",
                format!("exec {charter} build {file_q} --shard \"$JOB_COMPLETION_INDEX/{n}\""),
            ),
        }
    });
    let merge = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": format!("{name}-merge"), "labels": { "app.kubernetes.io/name": name } },
        "spec": {
            "suspend": true,
            "backoffLimit": k8s.retries,
            "template": pod("merge", format!("exec {charter} build {file_q} --merge --shards {n}")),
        }
    });
    Ok(format!(
        "# {file}, split into {n} shards: an Indexed Job runs `charter build --shard I/{n}`\n\
         # in each pod; the merge Job starts suspended. The claim `{claim}` (ReadWriteMany)\n\
         # holds {mount}, mounted at the same path.\n\
         #\n\
         #   kubectl apply -f THIS_FILE\n\
         #   kubectl wait --for=condition=complete --timeout=-1s job/{name}-shards\n\
         #   kubectl patch job {name}-merge --type=merge -p '{{\"spec\":{{\"suspend\":false}}}}'\n\
         ---\n{}---\n{}",
        yaml(&shards, 0),
        yaml(&merge, 0),
        file = file.display(),
        claim = k8s.claim,
        mount = mount.display(),
    ))
}

/// Block-style YAML of a JSON value; strings are double-quoted (JSON
/// escapes are YAML's), so no value can be misread.
fn yaml(value: &Json, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let scalar = |v: &Json| match v {
        Json::String(s) => Json::String(s.clone()).to_string(),
        other => other.to_string(),
    };
    let mut out = String::new();
    match value {
        Json::Object(map) => {
            for (k, v) in map {
                match v {
                    Json::Object(m) if !m.is_empty() => {
                        out += &format!("{pad}{k}:\n{}", yaml(v, indent + 2));
                    }
                    Json::Array(a) if !a.is_empty() => {
                        out += &format!("{pad}{k}:\n{}", yaml(v, indent + 2));
                    }
                    Json::Object(_) => out += &format!("{pad}{k}: {{}}\n"),
                    Json::Array(_) => out += &format!("{pad}{k}: []\n"),
                    _ => out += &format!("{pad}{k}: {}\n", scalar(v)),
                }
            }
        }
        Json::Array(items) => {
            for v in items {
                match v {
                    Json::Object(m) if !m.is_empty() => {
                        let inner = yaml(v, indent + 2);
                        out += &format!("{pad}- {}\n", &inner.trim_end()[indent + 2..]);
                    }
                    Json::Array(a) if !a.is_empty() => {
                        out += &format!("{pad}-\n{}", yaml(v, indent + 2));
                    }
                    _ => out += &format!("{pad}- {}\n", scalar(v)),
                }
            }
        }
        other => out += &format!("{pad}{}\n", scalar(other)),
    }
    out
}
