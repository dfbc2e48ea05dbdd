#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (tests/__fuzz__/<target>/corpus/).

Seeds are cut from real recordings, so that mutations start from what the
tool really writes: a Node program that keeps Buffers (with heap snapshots)
and a C program that leaks with malloc and mmap (--exact). A few
hand-written inputs add what a short run does not produce (allocation
traces, a self size past 4 GiB, odd perf-map and maps lines).

    cargo build --release -p offheap
    python3 crates/offheap-fuzz/make-corpus.py target/release/offheap

Needs node and gcc. Only the files this script writes are replaced:
regression seeds (inputs that once failed) stay.
"""

import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tests", "__fuzz__")
SEP = b"\n=====\n"  # targets::FILE_SEPARATOR


def put(target, name, data):
    d = os.path.join(OUT, target, "corpus")
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    print(f"{target}/{name}: {len(data)} bytes")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def lines(path, n):
    return b"".join(read(path).splitlines(keepends=True)[:n])


# ---------------------------------------------------------------- native stream

MAGIC = b"OFHNATV1"
HEADER, MODULE, UNLOADED, STACK, BEGIN, COUNTERS, ALLOCATOR, NOTE, END, ORIGIN = range(1, 11)


def fnv(b):
    h = 0x811C9DC5
    for x in b:
        h = ((h ^ x) * 0x01000193) & 0xFFFFFFFF
    return h


def records(data):
    assert data[:8] == MAGIC
    pos = 8
    while pos + 9 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        if pos + 9 + n > len(data):
            break
        yield data[pos + 4], data[pos + 5 : pos + 5 + n]
        pos += 9 + n


def record(tag, payload):
    return struct.pack("<IB", len(payload), tag) + payload + struct.pack("<I", fnv(bytes([tag]) + payload))


def shrink_native(data, max_stacks, keep_snapshots):
    """The stream with only stacks < max_stacks, and only the snapshots
    whose position is in keep_snapshots (negative: from the end)."""
    recs = list(records(data))
    n_snap = sum(1 for t, _ in recs if t == BEGIN)
    keep = {k % n_snap for k in keep_snapshots} if n_snap else set()
    out = [MAGIC]
    snap = -1
    inside = False
    for t, p in recs:
        if t == BEGIN:
            snap += 1
            inside = True
        if t == STACK and struct.unpack_from("<I", p)[0] >= max_stacks:
            continue
        if t == ORIGIN and struct.unpack_from("<I", p)[0] >= max_stacks:
            continue
        if t == COUNTERS:
            (n,) = struct.unpack_from("<I", p)
            entries = [p[4 + 44 * i : 4 + 44 * (i + 1)] for i in range(n)]
            entries = [e for e in entries if struct.unpack_from("<I", e)[0] < max_stacks]
            p = struct.pack("<I", len(entries)) + b"".join(entries)
        # Module, stack and note records count wherever they are; the
        # snapshot framing and counters only in the kept snapshots.
        if t in (BEGIN, COUNTERS, ALLOCATOR, END) and (not inside or snap not in keep):
            if t == END:
                inside = False
            continue
        if t == END:
            inside = False
        out.append(record(t, p))
    return b"".join(out)


def native_seeds(node_rec, c_rec):
    node = read(glob.glob(os.path.join(node_rec, "native-*.bin"))[0])
    c = read(glob.glob(os.path.join(c_rec, "native-*.bin"))[0])
    small_node = shrink_native(node, 12, [0, 1, -1])
    seeds = {
        "c-exact-full.bin": c,
        "node-shrunk.bin": small_node,
        "c-cut-mid-record.bin": c[: len(c) * 2 // 3],
        "node-head-4k.bin": node[:4096],
    }
    for target in ("native_decode", "native_records"):
        for name, data in seeds.items():
            put(target, name, data)
    return small_node, c


# -------------------------------------------------------------- JSON streams


def node_lines(path, budget=6000):
    """One line of each record type (two of the heap-profile ones, one with
    sites), in stream order, cut to budget bytes."""
    seen = {}
    out = []
    for line in read(path).splitlines(keepends=True):
        try:
            ty = json.loads(line).get("type")
        except ValueError:
            continue
        if ty == "heap_profile" and b'"sites":[[' in line and seen.get("sites", 0) < 1:
            seen["sites"] = 1
            v = json.loads(line)
            v["sites"] = v["sites"][:6]
            line = (json.dumps(v, separators=(",", ":")) + "\n").encode()
        elif seen.get(ty, 0) >= (3 if ty in ("mem", "gc", "heap_frame", "heap_stack") else 1):
            continue
        if ty == "mem":
            v = json.loads(line)
            v["spaces"] = dict(list(v.get("spaces", {}).items())[:2])
            line = (json.dumps(v, separators=(",", ":")) + "\n").encode()
        seen[ty] = seen.get(ty, 0) + 1
        out.append(line)
    data = b"".join(out)
    return data[:budget]


def jsonl_seeds(node_rec, c_rec):
    put("jsonl_proc", "node-proc.jsonl", lines(os.path.join(node_rec, "proc.jsonl"), 3))
    c_proc = lines(os.path.join(c_rec, "proc.jsonl"), 4)
    put("jsonl_proc", "c-proc-cut.jsonl", c_proc[: len(c_proc) - 40])
    put(
        "jsonl_proc",
        "odd-lines.jsonl",
        b'{"t":1,"pid":1,"status":{"VmRSS":1}}\n\n   \n{"t":2,"pid":1,"status":{}}garbage\n'
        b'{"t":1e308,"pid":4294967295,"status":{"VmRSS":18446744073709551615},"cmdline":["a\\u0000"]}\n'
        b'{"t":3,"pid":1,"status":{"VmRSS":-1}}\n{"t":4,"pid":1,"status"',
    )
    node = node_lines(glob.glob(os.path.join(node_rec, "node-*.jsonl"))[0])
    put("jsonl_node", "node-stream.jsonl", node)
    put(
        "jsonl_node",
        "ids-and-unknown.jsonl",
        b'{"type":"heap_frame","id":4000000000,"function":"f","url":"","line":1}\n'
        b'{"type":"heap_stack","id":3,"frames":[0,1,4294967295]}\n'
        b'{"type":"from_a_newer_agent","t":1,"x":[1,2]}\n'
        b'{"type":"gc","t":5,"kind":4,"flags":4,"duration_ms":1.5,"heap_used_after":10}\n'
        b'{"type":"bye","t":6}\n{"type":"hello"}\n{"type":"note","t":7,"text":"\\u001b[2J"}\n',
    )
    return node


# ---------------------------------------------------------------- recordings


def cut_json(v, depth=0):
    """heap.json with every list cut to its first element."""
    if isinstance(v, list):
        return [cut_json(x, depth + 1) for x in v[:1]]
    if isinstance(v, dict):
        return {k: cut_json(x, depth + 1) for k, x in v.items()}
    return v


def recording_seeds(node_rec, c_rec, node_native, node_jsonl, c_native):
    def part(rec, name):
        p = os.path.join(rec, name)
        return read(p) if os.path.exists(p) else b""

    perf = glob.glob(os.path.join(node_rec, "perf-*.map"))[0]
    heap = json.dumps(cut_json(json.loads(read(os.path.join(node_rec, "heap.json"))))).encode()
    node = [
        part(node_rec, "recording.json"),
        part(node_rec, "end.json"),
        lines(os.path.join(node_rec, "proc.jsonl"), 6),
        node_jsonl,
        node_native,
        lines(perf, 30),
        lines(perf + ".times", 4),
        heap,
    ]
    c = [
        part(c_rec, "recording.json"),
        part(c_rec, "end.json"),
        lines(os.path.join(c_rec, "proc.jsonl"), 8),
        b"",
        c_native,
    ]
    # Cut short: no end.json, the native stream cut inside a record.
    cut = [c[0], b"{\"end_ms\":", c[2][:500], b"", c_native[:3000]]
    for target in ("recording", "recording_analysis"):
        put(target, "node-run", SEP.join(node))
        put(target, "c-exact-run", SEP.join(c))
        put(target, "c-cut-short", SEP.join(cut))


# ------------------------------------------------------------ heap snapshots

# A hand-written snapshot in the layout of Node 20 (V8 11): a Holder held
# by a closure's context keeps an ArrayBuffer (1 MiB of backing store) and a
# view on it; a weakly held view; a native wrapper under (Global handles);
# a closure larger than 4 GiB (a self size past u32); allocation traces and
# a location.
HAND_SNAPSHOT = {
    "snapshot": {
        "meta": {
            "node_fields": ["type", "name", "id", "self_size", "edge_count", "trace_node_id", "detachedness"],
            "node_types": [
                ["hidden", "array", "string", "object", "code", "closure", "regexp", "number", "native",
                 "synthetic", "concatenated string", "sliced string", "symbol", "bigint", "object shape"],
                "string", "number", "number", "number", "number", "number",
            ],
            "edge_fields": ["type", "name_or_index", "to_node"],
            "edge_types": [["context", "element", "property", "internal", "hidden", "shortcut", "weak"],
                           "string_or_number", "node"],
            "trace_function_info_fields": ["function_id", "name", "script_name", "script_id", "line", "column"],
            "trace_node_fields": ["id", "function_info_index", "count", "size", "children"],
            "sample_fields": ["timestamp_us", "last_assigned_id"],
            "location_fields": ["object_index", "script_id", "line", "column"],
        },
        "node_count": 10,
        "edge_count": 12,
        "trace_function_count": 2,
    },
    # type name id self_size edge_count trace_node_id detachedness
    "nodes": [
        9, 0, 1, 0, 3, 0, 0,  # 0 root
        9, 1, 3, 0, 2, 0, 0,  # 1 (GC roots)
        9, 2, 5, 0, 1, 0, 0,  # 2 (Global handles)
        3, 3, 7, 32, 2, 2, 0,  # 3 Holder
        3, 4, 9, 64, 1, 0, 0,  # 4 ArrayBuffer
        8, 5, 11, 1048576, 0, 0, 0,  # 5 system / JSArrayBufferData
        3, 6, 13, 40, 1, 1, 0,  # 6 Uint8Array
        5, 7, 15, 5000000000, 1, 0, 0,  # 7 closure leaky (> 4 GiB)
        0, 8, 17, 24, 1, 0, 0,  # 8 system / Context
        8, 9, 19, 100, 0, 0, 1,  # 9 Node / TCPWrap
    ],
    # type name_or_index to_node
    "edges": [
        1, 1, 7, 5, 10, 21, 1, 2, 14,  # root: (GC roots), shortcut kept, (Global handles)
        1, 1, 49, 6, 11, 42,  # (GC roots): closure, weak view
        4, 0, 63,  # (Global handles): TCPWrap
        2, 12, 28, 2, 13, 42,  # Holder.buf, Holder.view
        3, 14, 35,  # ArrayBuffer backing_store
        3, 15, 28,  # Uint8Array buffer
        0, 16, 56,  # closure context
        0, 17, 21,  # context a
    ],
    "trace_function_infos": [1, 7, 18, 3, 4, 23, 2, 3, 18, 3, 10, 1],
    "trace_tree": [1, 0, 1, 32, [2, 1, 1, 32, [], 3, 0, 1, 40, []]],
    "samples": [],
    "locations": [49, 3, 4, 22],
    "strings": ["", "(GC roots)", "(Global handles)", "Holder", "ArrayBuffer", "system / JSArrayBufferData",
                "Uint8Array", "leaky", "system / Context", "Node / TCPWrap", "kept", "w", "buf", "view",
                "backing_store", "buffer", "context", "a", "/app/leak.js", "\u00e9\U0001F600 \"q\"\\\n"],
}

# The unit test's snapshot: root -> A -> C, root -> B -> C, A -weak-> D.
TINY_SNAPSHOT = (
    '{"snapshot":{"meta":{"node_fields":["type","name","id","self_size","edge_count"],'
    '"node_types":[["hidden","object","synthetic"],"string","number","number","number"],'
    '"edge_fields":["type","name_or_index","to_node"],'
    '"edge_types":[["element","property","weak","shortcut"],"string_or_number","node"]},'
    '"node_count":5,"edge_count":5},'
    '"nodes":[2,0,1,0,2, 1,1,3,10,2, 1,2,5,20,1, 1,3,7,30,0, 1,4,9,40,0],'
    '"edges":[1,1,5, 1,2,10, 1,3,15, 2,4,20, 1,3,15],'
    '"strings":["","A","B","C","D"]}'
)


def shrink_snapshot(path, keep, reverse=False):
    """A valid snapshot of the first `keep` nodes a breadth-first walk from
    the root reaches (edges in file order, or reversed), with the edges
    among them and only the strings they use."""
    s = json.loads(read(path))
    meta = s["snapshot"]["meta"]
    nf, ef = len(meta["node_fields"]), len(meta["edge_fields"])
    nodes, edges = s["nodes"], s["edges"]
    fi = {f: i for i, f in enumerate(meta["node_fields"])}
    fe = {f: i for i, f in enumerate(meta["edge_fields"])}
    etypes = meta["edge_types"][0]
    n = len(nodes) // nf
    first = [0] * (n + 1)
    for i in range(n):
        first[i + 1] = first[i] + nodes[i * nf + fi["edge_count"]]
    order, seen = [0], {0}
    k = 0
    while k < len(order) and len(order) < keep:
        u = order[k]
        k += 1
        es = range(first[u], first[u + 1])
        for e in reversed(es) if reverse else es:
            v = edges[e * ef + fe["to_node"]] // nf
            if v not in seen and len(order) < keep:
                seen.add(v)
                order.append(v)
    new = {old: i for i, old in enumerate(order)}
    strings, smap = [], {}

    def sid(i):
        if i not in smap:
            smap[i] = len(strings)
            strings.append(s["strings"][i] if i < len(s["strings"]) else "")
        return smap[i]

    out_nodes, out_edges = [], []
    for old in order:
        rec = nodes[old * nf : old * nf + nf]
        kept = []
        for e in range(first[old], first[old + 1]):
            er = edges[e * ef : e * ef + ef]
            to = er[fe["to_node"]] // nf
            if to in new:
                er = list(er)
                er[fe["to_node"]] = new[to] * nf
                if etypes[er[fe["type"]]] not in ("element", "hidden"):
                    er[fe["name_or_index"]] = sid(er[fe["name_or_index"]])
                kept.append(er)
        rec = list(rec)
        rec[fi["name"]] = sid(rec[fi["name"]])
        rec[fi["edge_count"]] = len(kept)
        if "trace_node_id" in fi:
            rec[fi["trace_node_id"]] = 0
        out_nodes += rec
        for er in kept:
            out_edges += er
    locs = s.get("locations", [])
    out_locs = []
    for i in range(0, len(locs) - 3, 4):
        if locs[i] // nf in new and locs[i] % nf == 0:
            out_locs += [new[locs[i] // nf] * nf] + locs[i + 1 : i + 4]
    snap = dict(s["snapshot"])
    snap["node_count"] = len(order)
    snap["edge_count"] = len(out_edges) // ef
    snap["trace_function_count"] = 0
    out = {
        "snapshot": snap,
        "nodes": out_nodes,
        "edges": out_edges,
        "trace_function_infos": [],
        "trace_tree": [],
        "samples": [],
        "locations": out_locs,
        "strings": strings,
    }
    # V8's own layout: one record per line.
    return json.dumps(out, separators=(",", ":")).encode()


def snapshot_seeds(node_rec):
    start = os.path.join(node_rec, "start.heapsnapshot")
    end = os.path.join(node_rec, "end.heapsnapshot")
    put("heap_snapshot", "tiny.heapsnapshot", TINY_SNAPSHOT)
    put("heap_snapshot", "hand-written.heapsnapshot", json.dumps(HAND_SNAPSHOT, indent=0))
    # Keys in another order, cut inside the strings: analysed with a warning.
    h = dict(HAND_SNAPSHOT)
    reordered = {"nodes": h["nodes"], "edges": h["edges"], "snapshot": h["snapshot"], "strings": h["strings"]}
    text = json.dumps(reordered, separators=(",", ":"))
    put("heap_snapshot", "reordered-cut-in-strings.heapsnapshot", text[: text.index("Uint8Array")])
    put("heap_snapshot", "real-shrunk.heapsnapshot", shrink_snapshot(end, 700))
    put("heap_snapshot", "real-shrunk-reverse.heapsnapshot", shrink_snapshot(start, 500, reverse=True))
    # A real snapshot cut short: the header and the start of the nodes.
    put("heap_snapshot", "real-truncated.heapsnapshot", read(start)[: 96 << 10])


# ------------------------------------------------------- perf map, ELF, maps


def perf_seeds(node_rec):
    perf = glob.glob(os.path.join(node_rec, "perf-*.map"))[0]
    real = lines(perf, 40)
    times = lines(perf + ".times", 5)
    put("perf_map", "real.map", real + b"\0" + times)
    put(
        "perf_map",
        "odd-lines.map",
        b"0x1000 0x100 JS:*hot /app/x y/hot.js:12:5\n1000 100 JS:~later /a.js:1:1\n"
        b"zz 10 bad\n0 ffffffffffff JS:~huge /a.js:1:1\nffffffffffffff00 1000 Builtin:Wrap\n"
        b"2000 0 JS:~empty\n3000 10 JS:+'get x node:fs:3:4\n\t4000\t10\tRegExp:a+b\n"
        b"5000 10 Eval:~ /a.js:1:1\n6000 10 BytecodeHandler:Lda\n7000 10 JS:~ file:///a b.mjs:4294967296:1\n"
        b"8000 10 cut"
        b"\0" + b"0 100\n30 200.5\nx y\n60 -inf\n90 1e400\n",
    )


LEAK_C = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
static void *keep[64];
__attribute__((noinline)) void *grow(size_t n) { return malloc(n); }
__attribute__((noinline)) void *grow_map(size_t n) {
  return mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}
int main(void) {
  for (int i = 0; i < 40; i++) {
    keep[i] = grow(100000);
    memset(keep[i], 1, 100000);
    if (i % 8 == 0) { void *m = grow_map(1 << 20); memset(m, 1, 4096); }
    free(grow(64));
    usleep(50000);
  }
  return 0;
}
"""

# What the symbolizer looks for in node's binary: V8's embedded blob and
# Builtins_* symbols inside it (with a call instruction before an offset).
BLOB_C = r"""
__asm__(
    ".section .rodata\n"
    ".globl v8_Default_embedded_blob_code_\n"
    ".type v8_Default_embedded_blob_code_, @object\n"
    "v8_Default_embedded_blob_code_:\n"
    ".globl Builtins_First\n"
    ".type Builtins_First, @function\n"
    "Builtins_First:\n"
    /* nop; call rel32 to Builtins_Second; nop; call rax; nop; call [rip+d32] */
    ".byte 0x90, 0xe8, 0x0a, 0, 0, 0, 0x90, 0xff, 0xd0, 0x90, 0xff, 0x15, 1, 2, 3, 4\n"
    ".globl Builtins_Second\n"
    ".type Builtins_Second, @function\n"
    "Builtins_Second:\n"
    ".byte 0xc3\n"
    ".zero 47\n"
    ".size v8_Default_embedded_blob_code_, 64\n");
__attribute__((used)) const unsigned int v8_Default_embedded_blob_code_size_ = 64;
void _start(void) { for (;;) {} }
"""


def elf_seeds():
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "blob.c")
        with open(src, "w") as f:
            f.write(BLOB_C)
        exe = os.path.join(d, "blob")
        subprocess.run(
            ["gcc", "-Os", "-nostdlib", "-static", "-fno-asynchronous-unwind-tables",
             "-Wl,--build-id=none", "-Wl,-z,norelro", "-Wl,-z,max-page-size=0x40",
             "-Wl,-z,noseparate-code", "-o", exe, src],
            check=True,
        )
        put("elf", "embedded-blob.elf", read(exe))
        main = os.path.join(d, "main.c")
        with open(main, "w") as f:
            f.write("int main(void) { return 0; }\n")
        subprocess.run(["gcc", "-Os", "-Wl,--build-id=none", "-o", exe, main], check=True)
        small = read(exe)
        put("elf", "small-dynamic.elf", small)
        put("elf", "small-dynamic-cut.elf", small[: len(small) // 2])


def maps_seeds():
    put("proc_maps", "self.maps", lines("/proc/self/maps", 40))
    put(
        "proc_maps",
        "odd.maps",
        b"00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon\n"
        b"00651000-00652000 rw-p 00051000 08:02 173521 /usr/bin/dbus-daemon\n"
        b"7f0000000000-7f0000001000 r-xp 00000000 00:00 0 /memfd:x (deleted)\n"
        b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n"
        b"2000-1000 r-xp ffffffffffffffff 00:00 1 /backwards\n"
        b"zz-yy r-xp 0 0 0 /bad\n7f00-7f10 r-xp 00000000 08:02 1 /path with spaces/lib.so\n",
    )


NODE_PROGRAM = (
    'const a=[];setInterval(()=>a.push(Buffer.alloc(1e5),{k:"x".repeat(50)}),10);'
    "setTimeout(()=>process.exit(0),3000)"
)


def record_runs(offheap, d):
    node_rec, c_rec = os.path.join(d, "node-rec"), os.path.join(d, "c-rec")
    run = [offheap, "run", "--quiet", "--interval", "200ms"]
    subprocess.run(run + ["--snapshots", "--out", node_rec, "--", "node", "-e", NODE_PROGRAM],
                   check=True, stdout=subprocess.DEVNULL)
    src, exe = os.path.join(d, "leak.c"), os.path.join(d, "leak")
    with open(src, "w") as f:
        f.write(LEAK_C)
    subprocess.run(["gcc", "-O1", "-g", "-o", exe, src], check=True)
    subprocess.run(run + ["--exact", "--out", c_rec, "--", exe], check=True, stdout=subprocess.DEVNULL)
    return node_rec, c_rec


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as d:
        write_all(*record_runs(os.path.abspath(sys.argv[1]), d))


def write_all(node_rec, c_rec):
    node_native, c_native = native_seeds(node_rec, c_rec)
    node_jsonl = jsonl_seeds(node_rec, c_rec)
    recording_seeds(node_rec, c_rec, node_native, node_jsonl, c_native)
    snapshot_seeds(node_rec)
    perf_seeds(node_rec)
    elf_seeds()
    maps_seeds()


if __name__ == "__main__":
    main()
