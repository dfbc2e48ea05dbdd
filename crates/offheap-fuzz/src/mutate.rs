//! Seeded mutations of corpus inputs: bit flips, byte and integer edits at
//! the byte level (little-endian length and count fields) and in text
//! (decimal and hex numbers), truncation, deletion, duplication, splices
//! from other seeds, token insertion.

/// SplitMix64: small, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// FNV-1a 64 of `b` (names saved inputs, derives per-target seeds).
pub fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Integers that break parsers: bounds, off-by-ones, powers of two.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    16,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    1 << 20,
    1 << 24,
    1 << 26,
    1 << 30,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 53,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// Text that means something to the formats read (JSON, V8's snapshot and
/// perf-map text, `/proc` maps).
const TOKENS: &[&[u8]] = &[
    b"\n",
    b",",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b":",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b" ",
    b"\t",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e308",
    b"-1e308",
    b"NaN",
    b"4294967295",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999",
    b"9999999999999999999",
    b"0x",
    b"ffffffffffffffff",
    b"\"type\":",
    b"\"nodes\":",
    b"\"edges\":",
    b"\"strings\":",
    b"\"snapshot\":",
    b"\"meta\":",
    b"\"trace_tree\":",
    b"\"trace_function_infos\":",
    b"\"locations\":",
    b"\"node_count\":",
    b"\"edge_count\":",
    b"JS:*",
    b"Builtin:",
    b"\xff\xfe",
    b"\x00",
];

/// Decimal renderings of integers (and a few non-integers) for text numbers.
const DECIMALS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "5",
    "6",
    "7",
    "255",
    "65535",
    "65536",
    "2147483647",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1.5",
    "1e300",
    "-0",
];

/// Applies 1 to 8 random mutations to `data`, which stays at most
/// `max_len` bytes. `others` are splice donors (other seeds).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>], max_len: usize) {
    let rounds = if rng.chance(4) {
        1 + rng.below(8)
    } else {
        1 + rng.below(3)
    };
    for _ in 0..rounds {
        mutate_once(rng, data, others);
    }
    data.truncate(max_len);
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(14) {
        // Bit flip.
        0 | 1 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Random or interesting byte.
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = if rng.chance(2) {
                rng.next_u64() as u8
            } else {
                *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 1, b'0', b'9', b'"', b'\n'])
            };
        }
        // Truncation (a file cut by SIGKILL).
        3 if len > 0 => {
            let at = rng.below(len);
            data.truncate(at);
        }
        // Deletion of a range.
        4 if len > 1 => {
            let a = rng.below(len);
            let n = 1 + rng.below((len - a).min(64));
            data.drain(a..a + n);
        }
        // Duplication of a range (a record written twice).
        5 if len > 1 => {
            let a = rng.below(len);
            let n = 1 + rng.below((len - a).min(256));
            let chunk = data[a..a + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        // Splice from another seed: insert or overwrite.
        6 if !others.is_empty() => {
            let o = rng.pick(others);
            if o.is_empty() {
                return;
            }
            let a = rng.below(o.len());
            let n = 1 + rng.below((o.len() - a).min(512));
            let chunk = &o[a..a + n];
            let at = rng.below(len + 1);
            if rng.chance(2) {
                data.splice(at..at, chunk.iter().copied());
            } else {
                let end = (at + n).min(len);
                data.splice(at..end, chunk.iter().copied());
            }
        }
        // Little-endian integer field edit (lengths, counts, ids).
        7 | 8 if len > 0 => {
            let width = *rng.pick(&[1usize, 2, 4, 4, 8]);
            if len < width {
                return;
            }
            // Fields are usually aligned to their record start, not to the
            // file: any offset.
            let at = rng.below(len - width + 1);
            let mut old = [0u8; 8];
            old[..width].copy_from_slice(&data[at..at + width]);
            let old = u64::from_le_bytes(old);
            let v = match rng.below(5) {
                0 => old.wrapping_add(1),
                1 => old.wrapping_sub(1),
                2 => old.wrapping_add(rng.below(64) as u64).wrapping_sub(32),
                3 => len as u64,
                _ => *rng.pick(INTERESTING),
            };
            data[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        // Text number edit: replace a run of digits.
        9 | 10 if len > 0 => {
            let start = rng.below(len);
            let Some(off) = data[start..].iter().position(|b| b.is_ascii_digit()) else {
                return;
            };
            let a = start + off;
            let n = data[a..].iter().take_while(|b| b.is_ascii_digit()).count();
            let old: Option<u64> = std::str::from_utf8(&data[a..a + n])
                .ok()
                .and_then(|s| s.parse().ok());
            let new = match (rng.below(3), old) {
                (0, Some(v)) => v.wrapping_add(1).to_string(),
                (1, Some(v)) => v.saturating_sub(1).to_string(),
                _ => rng.pick(DECIMALS).to_string(),
            };
            data.splice(a..a + n, new.into_bytes());
        }
        // Token insertion.
        11 | 12 => {
            let t = rng.pick(TOKENS);
            let at = rng.below(len + 1);
            data.splice(at..at, t.iter().copied());
        }
        // A few random bytes.
        _ => {
            let n = 1 + rng.below(8);
            let at = rng.below(len + 1);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
    }
}
