//! Fidelity corpus (issue 18, "keep it so"): real programs give the same
//! exit status and the same output under `offheap run` (default sampling
//! and `--exact`) as when run plainly. offheap must never change how a
//! target behaves.

mod common;
use common::*;
use std::process::{Command, Output};

/// A program of the corpus: a name and its command line (run in the sandbox).
struct Case {
    name: &'static str,
    cmd: Vec<String>,
}

fn plain(sb: &Sandbox, cmd: &[String]) -> Output {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(sb.dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn corpus(sb: &Sandbox) -> Vec<Case> {
    let threads = sb.gcc(
        "threads.c",
        r#"#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void *work(void *arg) {
  long id = (long)arg, sum = 0;
  for (int i = 0; i < 2000; i++) {
    char *p = malloc(16 + (i * 37 + id) % 4096);
    memset(p, (int)id, 16);
    sum += p[0];
    p = realloc(p, 8192);
    free(p);
  }
  return (void *)sum;
}
int main(void) {
  pthread_t t[32];
  long total = 0;
  for (long i = 0; i < 32; i++) pthread_create(&t[i], NULL, work, (void *)i);
  for (int i = 0; i < 32; i++) { void *r; pthread_join(t[i], &r); total += (long)r; }
  printf("total %ld\n", total);
  return 7;
}
"#,
        "threads",
        &["-pthread"],
    );
    let forks = sb.gcc(
        "forks.c",
        r#"#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
  int ok = 0;
  for (int i = 0; i < 100; i++) {
    pid_t p = fork();
    if (p == 0) { void *m = malloc(1000 + i); _exit(m ? i % 7 : 99); }
    int st; waitpid(p, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == i % 7) ok++;
  }
  printf("children ok %d\n", ok);
  return 0;
}
"#,
        "forks",
        &[],
    );
    let dl = sb.gcc(
        "dl.c",
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
  for (int i = 0; i < 20; i++) {
    void *h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL | (i % 2 ? RTLD_DEEPBIND : 0));
    if (!h) { printf("dlopen failed\n"); return 3; }
    double (*c)(double) = (double (*)(double))dlsym(h, "cos");
    if (!c || c(0.0) != 1.0) return 4;
    void *p = calloc(10, 100); free(p);
    dlclose(h);
  }
  void *a = aligned_alloc(64, 4096), *b = NULL;
  if (posix_memalign(&b, 256, 100)) return 5;
  printf("dl ok %d\n", (int)((long)a % 64 + (long)b % 256));
  free(a); free(b);
  return 0;
}
"#,
        "dl",
        &["-ldl"],
    );
    sb.write(
        "nodeall.js",
        r#"const { Worker, isMainThread, parentPort } = require('worker_threads');
const crypto = require('crypto'), zlib = require('zlib'), cp = require('child_process');
if (!isMainThread) {
  parentPort.postMessage(crypto.createHash('sha256').update('w').digest('hex').slice(0, 8));
} else {
  const w = new Worker(__filename);
  w.on('message', (m) => {
    const z = zlib.inflateSync(zlib.deflateSync(Buffer.alloc(100000, 'a'))).length;
    crypto.pbkdf2('pw', 'salt', 1000, 32, 'sha256', (e, k) => {
      const out = cp.execFileSync('sh', ['-c', 'echo child $((6*7))']).toString().trim();
      console.log(m, z, k.toString('hex').slice(0, 8), out);
      process.exitCode = 5;
    });
  });
}
"#,
    );
    sb.write(
        "threads.py",
        "import threading\nr = []\ndef f(i): r.append(sum(range(i * 1000)))\n\
         ts = [threading.Thread(target=f, args=(i,)) for i in range(16)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\nprint(len(r), sum(r))\nraise SystemExit(2)\n",
    );
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let p = |x: &std::path::Path| x.to_string_lossy().into_owned();
    let mut cases = vec![
        Case {
            name: "32 threads",
            cmd: vec![p(&threads)],
        },
        Case {
            name: "100 forks",
            cmd: vec![p(&forks)],
        },
        Case {
            name: "dlopen/dlclose with RTLD_DEEPBIND",
            cmd: vec![p(&dl)],
        },
        Case {
            name: "node worker/crypto/zlib/child_process",
            cmd: s(&["node", "nodeall.js"]),
        },
        Case {
            name: "sh pipeline",
            cmd: s(&["sh", "-c", "seq 1 2000 | sort -r | head -3; exit 3"]),
        },
        Case {
            name: "tar",
            cmd: s(&["sh", "-c", "tar cf - threads.c forks.c dl.c | tar tf -"]),
        },
        Case {
            name: "gcc",
            cmd: s(&["gcc", "--version"]),
        },
    ];
    if Command::new("python3")
        .arg("-c")
        .arg("0")
        .status()
        .is_ok_and(|s| s.success())
    {
        cases.push(Case {
            name: "python threads",
            cmd: s(&["python3", "threads.py"]),
        });
    }
    if Command::new("git")
        .arg("--version")
        .status()
        .is_ok_and(|s| s.success())
    {
        cases.push(Case {
            name: "git",
            cmd: s(&["git", "--version"]),
        });
    }
    cases
}

#[test]
fn programs_behave_the_same_under_offheap() {
    let sb = Sandbox::new();
    let mut failures = Vec::new();
    for (k, case) in corpus(&sb).iter().enumerate() {
        let want = plain(&sb, &case.cmd);
        for (m, mode) in [&[][..], &["--exact"][..]].iter().enumerate() {
            let rec = format!("rec-{k}-{m}");
            let cmd: Vec<&str> = case.cmd.iter().map(|s| s.as_str()).collect();
            let got = sb.run(&rec, mode, &cmd);
            if got.status.code() != want.status.code() || got.stdout != want.stdout {
                failures.push(format!(
                    "{} {mode:?}: status {:?} vs plain {:?}\nstdout:\n{}\nplain stdout:\n{}\nstderr:\n{}",
                    case.name,
                    got.status.code(),
                    want.status.code(),
                    String::from_utf8_lossy(&got.stdout),
                    String::from_utf8_lossy(&want.stdout),
                    String::from_utf8_lossy(&got.stderr)
                ));
            }
            assert!(
                sb.path(&rec).join("summary.json").exists(),
                "{}: no summary.json",
                case.name
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
