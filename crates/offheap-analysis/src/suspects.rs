//! Making a suspect stack readable: collapse allocator internals, find the
//! frame that owns the memory, and give known culprits a hint.

use crate::model::{JsOwner, Suspect, SuspectKind};
use offheap_symbols::{Frame, FrameKind};

/// Frames of V8's heap profiler and allocation tracker, and of offheap's
/// own JS agent: memory that exists because offheap took snapshots, heap
/// profiles or tracked allocations, not the target's. (Node 24's V8 runs a
/// full GC inside every sampling-profile read: the heap pages it maps then
/// carry the agent's frame, and are the V8 heap the verdict already sees.)
pub fn is_instrumentation(f: &Frame) -> bool {
    let n = f.function.as_str();
    if f.kind == FrameKind::Js {
        return f
            .file
            .as_deref()
            .is_some_and(|p| p.ends_with("/offheap-agent.js"));
    }
    // One search for the common part first: this runs on every frame of
    // every stack.
    let Some(at) = n.find("v8::internal::") else {
        return false;
    };
    let n = &n[at..];
    n.contains("v8::internal::AllocationTracker")
        || n.contains("v8::internal::HeapObjectsMap")
        || n.contains("v8::internal::HeapSnapshotGenerator")
        || n.contains("v8::internal::HeapProfiler")
        || n.contains("v8::internal::V8HeapExplorer")
        || n.contains("v8::internal::HeapSnapshot::")
}

/// Frames of Node's ArrayBuffer allocator: a Buffer or ArrayBuffer backing
/// store, which V8 also counts, exactly, in `external`/`arrayBuffers`. The
/// sampled native figure of such a stack is a noisy copy of that counter.
pub fn is_backing_store(frames: &[Frame]) -> bool {
    frames.iter().any(|f| {
        let n = f.function.as_str();
        // A cheap filter first: this runs on every frame of every stack.
        f.kind != FrameKind::Js
            && (n.contains("Buffer") || n.contains("BackingStore"))
            && (n.contains("ArrayBufferAllocator")
                || n.contains("BackingStore")
                || n.contains("node::Buffer"))
    })
}

/// Frames of V8 reserving its own heap's pages (new and old spaces, large
/// objects, code): that memory is the V8 heap, measured by the V8 heap
/// figures, and the JS that fills it is named by the js-heap suspects.
pub fn is_v8_heap_pages(frames: &[Frame]) -> bool {
    frames.iter().any(|f| {
        let n = f.function.as_str();
        f.kind != FrameKind::Js
            && n.contains("v8::internal::")
            && (n.contains("v8::internal::MemoryAllocator::")
                || n.contains("v8::internal::VirtualMemory::")
                || n.contains("v8::internal::CodeRange::"))
    })
}

/// A suspect (rank 0: ranked later) from its frames, innermost first,
/// allocator frames already collapsed.
pub fn suspect(
    frames: Vec<Frame>,
    kind: SuspectKind,
    bytes_per_s: f64,
    live_bytes: u64,
    allocations: u64,
) -> Suspect {
    let (module, function) = owner(&frames);
    Suspect {
        rank: 0,
        bytes_per_s,
        live_bytes,
        allocations,
        hint: hint(&frames),
        js: js_owner(&frames),
        module,
        function,
        kind,
        thread: None,
        frames,
    }
}

/// Drops leading allocator frames (keeping at least one frame).
pub fn collapse_allocator(frames: Vec<Frame>) -> Vec<Frame> {
    let skip = frames
        .iter()
        .take_while(|f| offheap_symbols::is_allocator_frame(f))
        .count();
    if skip >= frames.len() {
        frames
    } else {
        frames.into_iter().skip(skip).collect()
    }
}

fn is_system_module(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.starts_with("libc.so")
        || base.starts_with("libc-")
        || base.starts_with("libstdc++")
        || base.starts_with("libgcc")
        || base.starts_with("ld-linux")
        || base.starts_with("libm.so")
        || base.starts_with("libpthread")
        || base.starts_with("liboffheap_agent")
        || base == "[anon]"
}

fn is_runtime_binary(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base == "node" || base.starts_with("nodejs") || base.starts_with("libnode")
}

/// The module and function that own a stack: the first frame in an addon or
/// user library, else the first JS frame, else the first non-system frame.
pub fn owner(frames: &[Frame]) -> (String, String) {
    let pick = |f: &Frame| (f.module.clone(), f.function.clone());
    if let Some(f) = frames
        .iter()
        .find(|f| {
            f.kind != FrameKind::Js
                && !is_system_module(&f.module)
                && !is_runtime_binary(&f.module)
                && f.kind != FrameKind::Builtin
        })
        .filter(|f| {
            f.module.ends_with(".node")
                || f.kind == FrameKind::Native
                || f.kind == FrameKind::Unknown
        })
    {
        return pick(f);
    }
    // The application's own JS before Node's internals (`node:`).
    if let Some(f) = frames
        .iter()
        .find(|f| is_user_js(f) && !script(f).contains("/node_modules/"))
        .or_else(|| frames.iter().find(|f| is_user_js(f)))
        .or_else(|| frames.iter().find(|f| f.kind == FrameKind::Js))
    {
        return pick(f);
    }
    if let Some(f) = frames.iter().find(|f| !is_system_module(&f.module)) {
        return pick(f);
    }
    frames.first().map(pick).unwrap_or_default()
}

/// The script a JS frame belongs to.
fn script(f: &Frame) -> &str {
    f.file
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(&f.module)
}

/// True for a JS frame of the program's own scripts or its dependencies:
/// not Node's own modules (`node:`), not V8's, not an unknown script.
pub fn is_user_js(f: &Frame) -> bool {
    let s = script(f);
    f.kind == FrameKind::Js
        && !s.is_empty()
        && !s.starts_with("node:")
        && !s.starts_with('[')
        && !s.starts_with("internal/")
        && !s.starts_with("evalmachine")
}

/// The application's own JS function on a stack: the innermost JS frame of
/// the program's scripts, preferring the application over its dependencies
/// (`node_modules`), which come second.
pub fn js_owner(frames: &[Frame]) -> Option<JsOwner> {
    let user: Vec<&Frame> = frames.iter().filter(|f| is_user_js(f)).collect();
    let f = user
        .iter()
        .find(|f| !script(f).contains("/node_modules/"))
        .or(user.first())?;
    Some(JsOwner {
        function: if f.function.trim().is_empty() {
            "(anonymous)".into()
        } else {
            f.function.clone()
        },
        file: script(f).trim_start_matches("file://").to_string(),
        line: f.line.filter(|&l| l > 0),
    })
}

/// Known culprits, recognised by the functions on the stack.
pub fn hint(frames: &[Frame]) -> Option<String> {
    let has = |pat: &str| frames.iter().any(|f| f.function.contains(pat));
    let h = if has("deflateInit")
        || has("inflateInit")
        || has("ZlibContext")
        || has("zlib") && has("Init")
    {
        "zlib stream state (~256 KB per deflate stream) that is never freed: close every zlib stream (stream.close() / .destroy(), or finish it with .end()) and do not keep finished streams referenced."
    } else if has("BrotliEncoder") || has("BrotliDecoder") {
        "Brotli stream state that is never freed: close or destroy every Brotli stream."
    } else if has("SSL_CTX_new") || has("SecureContext") {
        "TLS contexts (SSL_CTX): create one SecureContext and reuse it instead of one per connection; contexts live until a full GC."
    } else if has("SSL_new") || has("TLSWrap") {
        "TLS connection state: sockets that are never destroyed keep their OpenSSL state."
    } else if is_backing_store(frames) {
        "Buffer/ArrayBuffer backing stores allocated through Node's ArrayBuffer allocator: something keeps Buffers alive; `offheap snapshot PID` shows what retains them."
    } else if has("vips_") || has("sharp") {
        "libvips/sharp: large image buffers; check sharp.cache() and sharp.concurrency(), and prefer jemalloc."
    } else if has("sqlite3_prepare") || has("Statement") && has("sqlite") {
        "sqlite3 prepared statements that are never finalized: call statement.finalize()."
    } else if has("napi_create_reference") {
        "N-API references that are never deleted (napi_delete_reference)."
    } else if has("napi_") || frames.iter().any(|f| f.module.ends_with(".node")) {
        "Allocated by a native addon (.node): look at the addon's function at the top of the stack; memory it allocates per call must be freed, or tied to a JS object's finalizer."
    } else {
        return None;
    };
    Some(h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, module: &str, kind: FrameKind) -> Frame {
        Frame {
            function: function.into(),
            module: module.into(),
            file: None,
            line: None,
            kind,
            address: 0,
            inlined: false,
        }
    }

    #[test]
    fn addon_owns_its_leak() {
        let frames = collapse_allocator(vec![
            f(
                "malloc",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                FrameKind::Native,
            ),
            f("leak_bytes", "/tmp/leak.node", FrameKind::Native),
            f(
                "v8impl::FunctionCallbackWrapper::Invoke",
                "/usr/bin/node",
                FrameKind::Native,
            ),
            f("leakNative", "/tmp/app.js", FrameKind::Js),
        ]);
        assert_eq!(frames[0].function, "leak_bytes");
        assert_eq!(
            owner(&frames),
            ("/tmp/leak.node".into(), "leak_bytes".into())
        );
        assert!(hint(&frames).unwrap().contains("addon"));
    }

    #[test]
    fn zlib_in_node_is_attributed_to_js() {
        let frames = vec![
            f(
                "node::ZlibContext::Init",
                "/usr/bin/node",
                FrameKind::Native,
            ),
            f("createDeflate", "node:zlib", FrameKind::Js),
        ];
        assert_eq!(owner(&frames).1, "createDeflate");
        assert!(hint(&frames).unwrap().contains("zlib"));
    }
}
