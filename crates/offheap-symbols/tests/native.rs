//! Real processes: a C program with a shared library, and a C++ program,
//! compiled here, print return addresses from a frame-pointer walk and
//! their own `/proc/self/maps`; we symbolize them offline.

use std::path::Path;
use std::process::Command;

use offheap_symbols::{Frame, FrameKind, ProcessSymbols, modules_from_proc_maps};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Splits the program's output: `ret 0x...` lines, then the maps text.
fn parse(out: &str) -> (Vec<u64>, String) {
    let mut rets = Vec::new();
    let mut maps = String::new();
    for l in out.lines() {
        if let Some(a) = l.strip_prefix("ret ") {
            rets.push(u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap());
        } else {
            maps.push_str(l);
            maps.push('\n');
        }
    }
    (rets, maps)
}

const WALK: &str = r#"
#include <stdio.h>
#include <string.h>
/* Prints DEPTH return addresses by walking frame pointers. */
__attribute__((noinline)) void walk_stack(int depth) {
    void **fp = (void **)__builtin_frame_address(0);
    for (int i = 0; i < depth && fp; i++) {
        printf("ret %p\n", fp[1]);
        fp = (void **)fp[0];
    }
    fflush(stdout);
}
void dump_maps(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
    fclose(f);
}
"#;

fn names(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|f| f.function.as_str()).collect()
}

#[test]
fn c_program_with_shared_library_and_inlining() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("walk.c"), WALK).unwrap();
    // Line numbers below are asserted: keep the layout.
    std::fs::write(
        d.join("lib.c"),
        "void walk_stack(int depth);\n\
         __attribute__((noinline)) void lib_middle(int depth) {\n\
         \x20   walk_stack(depth);\n\
         \x20   __asm__ volatile(\"\");\n\
         }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("main.c"),
        "void lib_middle(int);\n\
         void dump_maps(void);\n\
         static inline __attribute__((always_inline)) void inlined_helper(int x) {\n\
         \x20   if (x) lib_middle(x + 2);\n\
         }\n\
         __attribute__((noinline)) void exe_outer(int x) {\n\
         \x20   inlined_helper(x);\n\
         \x20   __asm__ volatile(\"\");\n\
         }\n\
         int main(int argc, char **argv) {\n\
         \x20   (void)argv;\n\
         \x20   exe_outer(argc);\n\
         \x20   dump_maps();\n\
         \x20   return 0;\n\
         }\n",
    )
    .unwrap();
    let flags = ["-g", "-O1", "-fno-omit-frame-pointer"];
    run(Command::new("gcc")
        .args(flags)
        .args(["-shared", "-fPIC", "-o"])
        .arg(d.join("libmid.so"))
        .arg(d.join("lib.c"))
        .arg(d.join("walk.c")));
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(d.join("prog"))
        .arg(d.join("main.c"))
        .arg(format!("-L{}", d.display()))
        .arg("-lmid")
        .arg(format!("-Wl,-rpath,{}", d.display())));
    // argc = 1 -> depth 3: lib_middle, exe_outer, main; then libc.
    let out = run(&mut Command::new(d.join("prog")));
    let (rets, maps) = parse(&out);
    assert_eq!(rets.len(), 3, "{out}");
    let modules = modules_from_proc_maps(&maps);
    assert!(
        modules.iter().any(|m| m.path.ends_with("/prog")),
        "{modules:?}"
    );
    let mut syms = ProcessSymbols::new(&modules, None);
    let frames = syms.symbolize(&rets, 0.0);
    eprintln!("{frames:#?}");
    assert_eq!(
        names(&frames),
        ["lib_middle", "inlined_helper", "exe_outer", "main"],
        "{frames:#?}"
    );
    let lib = &frames[0];
    assert!(lib.module.ends_with("/libmid.so"));
    assert!(lib.file.as_deref().unwrap().ends_with("lib.c"));
    assert_eq!(lib.line, Some(3));
    assert_eq!(lib.kind, FrameKind::Native);
    assert_eq!(lib.address, rets[0]);
    let inl = &frames[1];
    assert!(inl.inlined);
    assert!(inl.file.as_deref().unwrap().ends_with("main.c"));
    assert_eq!(inl.line, Some(4));
    assert!(inl.module.ends_with("/prog"));
    let outer = &frames[2];
    assert!(!outer.inlined);
    assert_eq!(outer.line, Some(7));
    assert_eq!(frames[3].line, Some(12));
    assert!(syms.notes().is_empty(), "{:?}", syms.notes());

    // Build-id mismatch: the same records, but the file on disk rebuilt with
    // another build-id. Still symbolized, with a note.
    let mut changed = modules.clone();
    for m in &mut changed {
        if m.path.ends_with("/libmid.so") {
            m.build_id = Some(vec![1, 2, 3, 4]);
        }
    }
    let mut syms = ProcessSymbols::new(&changed, None);
    let frames = syms.symbolize(&rets, 0.0);
    assert_eq!(frames[0].function, "lib_middle");
    assert!(
        syms.notes()
            .iter()
            .any(|n| n.contains("libmid.so") && n.contains("build-id")),
        "{:?}",
        syms.notes()
    );

    // The library is gone: frames stay, as module+offset.
    std::fs::remove_file(d.join("libmid.so")).unwrap();
    let mut syms = ProcessSymbols::new(&modules, None);
    let frames = syms.symbolize(&rets, 0.0);
    assert_eq!(frames[0].kind, FrameKind::Unknown);
    assert!(
        frames[0].function.starts_with("libmid.so+0x"),
        "{}",
        frames[0].function
    );
    assert_eq!(frames[2].function, "exe_outer");
    assert!(
        syms.notes().iter().any(|n| n.contains("libmid.so")),
        "{:?}",
        syms.notes()
    );
}

#[test]
fn libc_frame_with_split_debug_info() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("walk.c"), WALK).unwrap();
    std::fs::write(
        d.join("main.c"),
        "void walk_stack(int); void dump_maps(void);\n\
         int main(void) { walk_stack(2); dump_maps(); return 0; }\n",
    )
    .unwrap();
    run(Command::new("gcc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(d.join("prog"))
        .arg(d.join("main.c"))
        .arg(d.join("walk.c")));
    let (rets, maps) = parse(&run(&mut Command::new(d.join("prog"))));
    let modules = modules_from_proc_maps(&maps);
    let mut syms = ProcessSymbols::new(&modules, None);
    let frames = syms.symbolize(&rets, 0.0);
    eprintln!("{frames:#?}");
    assert_eq!(frames[0].function, "main");
    let libc_mod = modules.iter().find(|m| m.path.contains("libc.so")).unwrap();
    let id: String = libc_mod
        .build_id
        .as_ref()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let debug_file = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    let libc = frames
        .iter()
        .find(|f| f.module.contains("libc.so"))
        .expect("a libc frame");
    assert!(libc.function.contains("libc_start"), "{libc:?}");
    // Debian's libc6-dbg puts libc's DWARF under /usr/lib/debug/.build-id.
    if Path::new(&debug_file).exists() {
        assert!(
            libc.file
                .as_deref()
                .unwrap()
                .contains("libc_start_call_main"),
            "{libc:?}"
        );
        assert!(libc.line.is_some());
    } else {
        eprintln!("note: {debug_file} absent; libc file:line not checked");
    }
}

#[test]
fn cpp_names_are_demangled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("walk.c"), WALK).unwrap();
    std::fs::write(
        d.join("main.cpp"),
        r#"#include <vector>
extern "C" void walk_stack(int); extern "C" void dump_maps(void);
namespace shop {
template <typename T> struct Basket {
    std::vector<T> items;
    __attribute__((noinline)) void add(const T &t, int depth) {
        items.push_back(t);
        walk_stack(depth);
        __asm__ volatile("");
    }
};
}
int main(int argc, char **) {
    shop::Basket<long> b;
    b.add(42, argc + 1);
    dump_maps();
    return 0;
}
"#,
    )
    .unwrap();
    run(Command::new("gcc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-c", "-o"])
        .arg(d.join("walk.o"))
        .arg(d.join("walk.c")));
    run(Command::new("g++")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(d.join("prog"))
        .arg(d.join("main.cpp"))
        .arg(d.join("walk.o")));
    let (rets, maps) = parse(&run(&mut Command::new(d.join("prog"))));
    let mut syms = ProcessSymbols::new(&modules_from_proc_maps(&maps), None);
    let frames = syms.symbolize(&rets, 0.0);
    eprintln!("{frames:#?}");
    assert_eq!(
        frames[0].function,
        "shop::Basket<long>::add(long const&, int)"
    );
    assert!(frames[0].file.as_deref().unwrap().ends_with("main.cpp"));
    assert_eq!(frames[0].line, Some(8));
    assert_eq!(frames.last().unwrap().function, "main");
}

#[inline(never)]
fn rust_marker_function(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_mul(31).rotate_left(7))
}

#[test]
fn rust_names_are_demangled() {
    // This test process itself: its own function, resolved through its maps.
    let f = rust_marker_function as *const () as u64;
    assert_eq!(rust_marker_function(1), 31u64.rotate_left(7));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut syms = ProcessSymbols::new(&modules_from_proc_maps(&maps), None);
    // +1: the symbolizer looks up `addr - 1` (return addresses).
    let frames = syms.symbolize(&[f + 1], 0.0);
    assert_eq!(
        frames[0].function, "native::rust_marker_function",
        "{frames:?}"
    );
    assert!(
        frames[0].file.as_deref().unwrap().ends_with("native.rs"),
        "{frames:?}"
    );
    assert_eq!(frames[0].kind, FrameKind::Native);
}

#[test]
fn split_debug_info_through_gnu_debuglink() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("walk.c"), WALK).unwrap();
    std::fs::write(
        d.join("lib.c"),
        "void walk_stack(int depth);\n\
         __attribute__((noinline)) void linked_fn(int depth) {\n\
         \x20   walk_stack(depth);\n\
         \x20   __asm__ volatile(\"\");\n\
         }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("main.c"),
        "void linked_fn(int); void dump_maps(void);\n\
         int main(void) { linked_fn(1); dump_maps(); return 0; }\n",
    )
    .unwrap();
    let flags = ["-g", "-O1", "-fno-omit-frame-pointer"];
    let lib = d.join("liblinked.so");
    run(Command::new("gcc")
        .args(flags)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(d.join("lib.c"))
        .arg(d.join("walk.c")));
    // Move the DWARF out: liblinked.so keeps only the symtab and a debuglink.
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&lib)
        .arg(d.join("liblinked.so.debug")));
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(format!(
            "--add-gnu-debuglink={}",
            d.join("liblinked.so.debug").display()
        ))
        .arg(&lib));
    let sections = run(Command::new("readelf").arg("-S").arg(&lib));
    assert!(
        !sections.contains(".debug_info") && sections.contains(".gnu_debuglink"),
        "{sections}"
    );
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(d.join("prog"))
        .arg(d.join("main.c"))
        .arg(format!("-L{}", d.display()))
        .arg("-llinked")
        .arg(format!("-Wl,-rpath,{}", d.display())));
    let (rets, maps) = parse(&run(&mut Command::new(d.join("prog"))));
    let mut syms = ProcessSymbols::new(&modules_from_proc_maps(&maps), None);
    let frames = syms.symbolize(&rets, 0.0);
    eprintln!("{frames:#?}");
    assert_eq!(frames[0].function, "linked_fn");
    assert!(
        frames[0].file.as_deref().unwrap().ends_with("lib.c"),
        "{frames:?}"
    );
    assert_eq!(frames[0].line, Some(3));
}

#[test]
fn cpp_inlined_member_function() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("walk.c"), WALK).unwrap();
    std::fs::write(
        d.join("main.cpp"),
        r#"extern "C" void walk_stack(int); extern "C" void dump_maps(void);
namespace shop {
struct Cart {
    int n;
    __attribute__((always_inline)) inline void checkout(int d) { walk_stack(d); n++; }
    __attribute__((noinline)) void run(int d) { checkout(d); __asm__ volatile(""); }
};
}
int main(int argc, char **) { shop::Cart c{0}; c.run(argc); dump_maps(); return c.n == 1 ? 0 : 1; }
"#,
    )
    .unwrap();
    run(Command::new("gcc")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-c", "-o"])
        .arg(d.join("walk.o"))
        .arg(d.join("walk.c")));
    run(Command::new("g++")
        .args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(d.join("prog"))
        .arg(d.join("main.cpp"))
        .arg(d.join("walk.o")));
    let (rets, maps) = parse(&run(&mut Command::new(d.join("prog"))));
    let mut syms = ProcessSymbols::new(&modules_from_proc_maps(&maps), None);
    let frames = syms.symbolize(&rets, 0.0);
    eprintln!("{frames:#?}");
    assert_eq!(frames.len(), 2, "{frames:#?}");
    assert!(frames[0].inlined);
    assert_eq!(frames[0].function, "shop::Cart::checkout(int)");
    assert_eq!(frames[0].line, Some(5));
    assert_eq!(frames[1].function, "shop::Cart::run(int)");
    assert_eq!(frames[1].line, Some(6));
}

/// dlclose + dlopen of another library at the same address: each stack is
/// resolved against the module that was loaded at its time.
#[test]
fn modules_reusing_an_address_resolve_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut recs = Vec::new();
    let bias = 0x7f00_0000_0000u64;
    let mut fn_addr = Vec::new();
    for (i, name) in ["first_library_fn", "second_library_fn"].iter().enumerate() {
        let src = d.join(format!("lib{i}.c"));
        std::fs::write(
            &src,
            format!("int {name}(int x) {{ return x * 3 + {i}; }}\n"),
        )
        .unwrap();
        let lib = d.join(format!("lib{i}.so"));
        run(Command::new("gcc")
            .args(["-g", "-O1", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src));
        let nm = run(Command::new("nm").arg(&lib));
        let vaddr = nm
            .lines()
            .find(|l| l.ends_with(&format!(" T {name}")))
            .map(|l| u64::from_str_radix(l.split(' ').next().unwrap(), 16).unwrap())
            .unwrap();
        fn_addr.push(bias + vaddr);
        recs.push(offheap_format::native::ModuleRecord {
            path: lib.to_string_lossy().into_owned(),
            bias,
            // gcc's shared objects map file offset == vaddr for their first pages.
            ranges: vec![(bias, bias + 0x4000, 0)],
            generation: i as u32,
            loaded_at_ms: 1000.0 * (i as f64 + 1.0),
            unloaded_at_ms: (i == 0).then_some(1500.0),
            ..Default::default()
        });
    }
    let mut syms = ProcessSymbols::new(&recs, None);
    // +2: inside the function (the symbolizer looks up addr - 1).
    let out = syms.symbolize_stacks(&[(&[fn_addr[0] + 2], 1200.0), (&[fn_addr[1] + 2], 2500.0)]);
    assert_eq!(out[0][0].function, "first_library_fn", "{out:?}");
    assert!(out[0][0].module.ends_with("lib0.so"));
    assert_eq!(out[1][0].function, "second_library_fn", "{out:?}");
    assert!(out[1][0].module.ends_with("lib1.so"));
    // Outside both lifetimes: the latest generation.
    assert!(
        syms.symbolize(&[fn_addr[1] + 2], 0.0)[0]
            .module
            .ends_with("lib1.so")
    );
}
