//! `charter report`: the HTML page of a build, from its output directory.

use anyhow::{Context, Result};
use charter_build::BuildPlan;

use crate::cli::ReportArgs;

pub(crate) fn run(args: ReportArgs, quiet: bool) -> Result<()> {
    let dir = if args.build.is_dir() {
        args.build.clone()
    } else {
        let plan = BuildPlan::load(&args.build)?;
        let report = plan.report_path();
        report
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    };
    let out = args
        .output
        .unwrap_or_else(|| dir.join(charter_report::REPORT_FILE));
    charter_report::write(&dir, &out).with_context(|| format!("report → {}", out.display()))?;
    if !quiet {
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
