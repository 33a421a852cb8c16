//! The SQLite oracle: every script of `../shared/sql-corpus` runs on SQLite's own WAL and on
//! ours (through the CLI, each in its own directory, with `random()`/`randomblob()` seeded
//! identically); the output must be byte-identical statement by statement; after a truncate
//! checkpoint of ours, every database file must hold the same pages (page 1 from byte 100
//! on), and stock `sqlite3` must say the same `PRAGMA integrity_check` on both.
//!
//! `ORACLE_FILTER=name` runs only scripts whose name contains `name`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_libsql-wal");
const PAGE: usize = 4096;
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
const WORKERS: usize = 2;

/// Scripts excluded, each for a cause outside the WAL (at most 5 allowed). None today.
const EXCLUDED: &[(&str, &str)] = &[];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/sql-corpus")
}

/// A stable seed per script, so both sides draw the same "random" values.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn run_with_timeout(mut cmd: Command) -> Result<std::process::Output, String> {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().map_err(|e| e.to_string())?;
    let started = Instant::now();
    // Drain output on threads so a chatty script cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut v).map(|_| v)
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {SCRIPT_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().expect("reader thread").map_err(|e| e.to_string())?,
        stderr: err.join().expect("reader thread").map_err(|e| e.to_string())?,
    })
}

fn exec(dir: &Path, script: &Path, seed: u64, wal: &str) -> Result<std::process::Output, String> {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).args(["exec", "--wal", wal, "--seed", &seed.to_string(), "data.db", "-f"]).arg(script);
    run_with_timeout(cmd)
}

fn pages(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_default();
    (0..data.len() / PAGE)
        .map(|i| if i == 0 { data[100..PAGE].to_vec() } else { data[i * PAGE..(i + 1) * PAGE].to_vec() })
        .collect()
}

fn integrity(path: &Path) -> String {
    let out = Command::new("sqlite3")
        .arg(path)
        .arg("PRAGMA integrity_check;")
        .output()
        .expect("stock sqlite3 must be installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.trim().to_string()
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (la, lb): (Vec<&[u8]>, Vec<&[u8]>) = (a.split(|&c| c == b'\n').collect(), b.split(|&c| c == b'\n').collect());
    let i = (0..la.len().min(lb.len())).find(|&i| la[i] != lb[i]).unwrap_or(la.len().min(lb.len()));
    let show = |v: &Vec<&[u8]>| {
        v.get(i).map_or("<eof>".to_string(), |l| String::from_utf8_lossy(l).chars().take(120).collect())
    };
    format!("line {}: sqlite={:?} ours={:?}", i + 1, show(&la), show(&lb))
}

/// SQLite database files a script left in `dir` (the main one and any it attached).
fn database_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.ends_with("-journal") && !n.ends_with("-shm") && !n.ends_with("-wal"))
                .filter(|n| std::fs::read(dir.join(n)).is_ok_and(|d| d.starts_with(b"SQLite format 3\0")))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The `Error: …` lines a run printed on stderr (log lines of either WAL are not compared).
fn error_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr).lines().filter(|l| l.starts_with("Error:")).map(str::to_owned).collect()
}

/// Runs one script on both sides; `Err` says how ours differs.
fn check_script(script: &Path) -> Result<(), String> {
    let name = script.file_name().unwrap().to_string_lossy().into_owned();
    let seed = seed_of(&name);
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (theirs, ours) = (tmp.path().join("sqlite"), tmp.path().join("ours"));
    // Both sides run under the same directory name, so paths printed by a script match.
    let work = tmp.path().join("run");
    std::fs::create_dir(&work).map_err(|e| e.to_string())?;
    let a = exec(&work, script, seed, "sqlite")?;
    std::fs::rename(&work, &theirs).map_err(|e| e.to_string())?;
    std::fs::create_dir(&work).map_err(|e| e.to_string())?;
    let b = exec(&work, script, seed, "libsql")?;
    if String::from_utf8_lossy(&b.stderr).contains("panicked") {
        return Err(format!("panic: {}", String::from_utf8_lossy(&b.stderr).lines().last().unwrap_or("")));
    }
    if a.stdout != b.stdout {
        return Err(format!("output differs at {}", first_difference(&a.stdout, &b.stdout)));
    }
    // Failing statements report on stderr (as sqlite3 does); the same errors, in order.
    let (errors_a, errors_b) = (error_lines(&a.stderr), error_lines(&b.stderr));
    if errors_a != errors_b {
        return Err(format!("errors differ: sqlite {errors_a:?} ours {errors_b:?}"));
    }
    let mut ckpt = Command::new(BIN);
    ckpt.current_dir(&work).args(["checkpoint", "data.db", "--mode", "truncate"]);
    let c = run_with_timeout(ckpt)?;
    std::fs::rename(&work, &ours).map_err(|e| e.to_string())?;
    let main_ok_on_sqlite = integrity(&theirs.join("data.db")) == "ok";
    if !c.status.success() && main_ok_on_sqlite {
        return Err(format!(
            "checkpoint failed: {}{}",
            String::from_utf8_lossy(&c.stdout).trim(),
            String::from_utf8_lossy(&c.stderr).trim()
        ));
    }
    if ours.join("data.db-wal").is_dir() && main_ok_on_sqlite {
        return Err("a truncate checkpoint left the log directory behind".into());
    }
    let (files_a, files_b) = (database_files(&theirs), database_files(&ours));
    if files_a != files_b {
        return Err(format!("database files differ: sqlite {files_a:?} ours {files_b:?}"));
    }
    for file in &files_a {
        let (pa, pb) = (pages(&theirs.join(file)), pages(&ours.join(file)));
        if pa.len() != pb.len() {
            return Err(format!("{file}: sizes differ: {} vs {} pages", pa.len(), pb.len()));
        }
        if let Some(i) = (0..pa.len()).find(|&i| pa[i] != pb[i]) {
            return Err(format!("{file}: page {} differs", i + 1));
        }
        let (ia, ib) = (integrity(&theirs.join(file)), integrity(&ours.join(file)));
        if ia != ib {
            return Err(format!("{file}: integrity_check sqlite={ia:.80} ours={ib:.80}"));
        }
    }
    Ok(())
}

#[test]
fn every_corpus_script_matches_sqlite_wal() {
    let dir = corpus_dir();
    let filter = std::env::var("ORACLE_FILTER").unwrap_or_default();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus must be at {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(&filter))
        .collect();
    scripts.sort();
    if filter.is_empty() {
        assert_eq!(scripts.len(), 444, "the corpus has 444 scripts");
    }
    assert!(EXCLUDED.len() <= 5);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let passed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                while let Some(script) = scripts.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let name = script.file_name().unwrap().to_string_lossy().into_owned();
                    if EXCLUDED.iter().any(|(n, _)| *n == name) {
                        continue;
                    }
                    match check_script(script) {
                        Ok(()) => {
                            passed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(why) => failures.lock().unwrap().push(format!("{name}: {why}")),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let passed = passed.into_inner();
    println!(
        "oracle: {passed} scripts identical to SQLite's WAL, {} differ, {} excluded",
        failures.len(),
        EXCLUDED.len()
    );
    assert!(failures.is_empty(), "{} scripts differ from SQLite's WAL:\n{}", failures.len(), failures.join("\n"));
    assert!(passed + EXCLUDED.len() == scripts.len());
}
