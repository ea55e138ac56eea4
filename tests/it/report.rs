//! `charter report` and the page `charter build` writes: its sections on a
//! tiny-model build, its bytes (the same build gives the same page), and
//! the page in a real browser (headless Chromium, where installed; CI sets
//! CHARTER_BROWSER_TESTS=1 to require it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::{pipeline, setup};
use crate::{constitution, fails, file, ok};

/// Checks the page of the build in `out`: written by the build, the same
/// bytes from `charter report`, holding `sections`, and shown by a browser.
pub(crate) fn check_page(out: &Path, sections: &[&str]) {
    let page = out.join("report.html");
    let html = std::fs::read_to_string(&page).expect("the build writes report.html");
    for section in sections {
        assert!(html.contains(section), "report.html has no {section:?}");
    }
    // Self-contained: nothing is fetched and nothing runs.
    for outside in ["http://", "https://", "<script", "<link", "src="] {
        assert!(!html.contains(outside), "report.html has {outside:?}");
    }
    let again = out.with_file_name("again.html");
    ok(&[
        "report",
        out.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        html,
        "deterministic"
    );
    in_browser(&page);
}

/// The first Chromium on `PATH`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Loads `page` in headless Chromium: no console messages (errors, failed
/// loads), the DOM holds the charts, and a screenshot is taken (kept in
/// the target directory to look at).
#[allow(clippy::print_stderr)] // a test saying what it skipped and where the screenshot is
fn in_browser(page: &Path) {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CHARTER_BROWSER_TESTS").is_none(),
            "CHARTER_BROWSER_TESTS is set but no chromium is on PATH (Debian: apt-get install chromium)"
        );
        eprintln!("skipped the browser check: no chromium on PATH");
        return;
    };
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let run = |extra: &[&str]| {
        let out = Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1280,3000",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium runs");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
        assert!(console.is_empty(), "console messages: {console:#?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let dom = run(&["--dump-dom"]);
    assert!(
        dom.contains("<svg") && dom.contains("Build report"),
        "{dom}"
    );
    run(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dims = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dims(16), dims(20)), (1280, 3000), "screenshot size");
    eprintln!("screenshot of the report: {}", shot.display());
}

#[test]
fn a_build_writes_its_report_page() {
    let dir = tempfile::tempdir().unwrap();
    let (model, prompts) = setup(dir.path(), 3);
    let text = pipeline(&model, &prompts, &constitution(), "")
        + "\n[[stage]]\nname = \"clean\"\nkind = \"filter\"\ninput = \"revisions-2\"\n";
    let build = file(dir.path(), "b.toml", text);
    ok(&["build", &build]);
    let out = dir.path().join("out");
    check_page(
        &out,
        &[
            "What to look at",
            "Build graph",
            "Quality flags",
            "Revisions by round",
            "Critique → revision chains",
            "Label quality",
            "order consistency",
        ],
    );
    // The stages and their inputs are in the graph and the table.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for stage in ["responses", "critiques-1", "revisions-2", "labels", "clean"] {
        assert!(html.contains(&format!(">{stage}<")), "{stage}");
    }
    // A build file names its output directory too.
    let from_file = dir.path().join("from-file.html");
    ok(&["report", &build, "-o", from_file.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&from_file).unwrap(),
        std::fs::read(out.join("report.html")).unwrap()
    );
    // A table that can no longer be read is named, not silently left out.
    std::fs::write(out.join("labels.parquet"), "not parquet").unwrap();
    ok(&[
        "report",
        out.to_str().unwrap(),
        "-o",
        from_file.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(&from_file).unwrap();
    assert!(
        html.contains("<b>labels</b>: its table cannot be read, so the page leaves it out"),
        "{html}"
    );
}

#[test]
fn report_names_a_directory_that_holds_no_build() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["report", dir.path().to_str().unwrap()], None);
    assert!(
        err.contains("build-report.json") && err.contains("run `charter build` first"),
        "{err}"
    );
    assert!(!dir.path().join("report.html").exists());
}

#[test]
fn a_failed_build_still_writes_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let lines = file(dir.path(), "p.txt", "A question\n");
    let prompts = dir.path().join("prompts.parquet");
    ok(&["prompts", "import", &lines, "-o", prompts.to_str().unwrap()]);
    let build = file(
        dir.path(),
        "b.toml",
        format!(
            "[build]\nout = \"out\"\n[[stage]]\nname = \"prompts\"\nkind = \"table\"\npath = \"{}\"\n\
             [[stage]]\nname = \"clean\"\nkind = \"filter\"\ninput = \"prompts\"\n",
            prompts.display()
        ),
    );
    let err = fails(&["build", &build], None);
    assert!(err.contains("not a `prompts` table"), "{err}");
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(html.contains("failed at stage clean"), "{html}");
}
