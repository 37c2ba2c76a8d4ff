//! The speed benchmark's data and bookkeeping (never its timings).

use burn::prelude::*;
use meta_ocl::bench::{bench, bench_rows, BenchConfig};

#[test]
fn rows_are_padded_sequences_at_the_default_block_and_packed_at_a_long_one() {
    let (vocab, rows, packed) = bench_rows(8).unwrap();
    assert!(!packed);
    assert!(rows.iter().all(|r| r.len() <= 8 && r.len() >= 2));
    let (vocab48, packed_rows, packed48) = bench_rows(48).unwrap();
    assert!(packed48);
    assert_eq!(vocab, vocab48);
    assert!(packed_rows.iter().all(|r| r.len() == 48));
    // Packing keeps the token stream: the packed rows are its first whole blocks.
    let stream: Vec<u32> = rows.into_iter().flatten().collect();
    let joined: Vec<u32> = packed_rows.iter().flatten().copied().collect();
    assert_eq!(joined.len(), stream.len() / 48 * 48);
    assert_eq!(&stream[..joined.len()], &joined[..]);
    assert!(bench_rows(4).is_err(), "a block shorter than a sequence is refused");
}

#[test]
fn a_tiny_bench_counts_tokens_and_params() {
    let cfg =
        BenchConfig { batch: 4, layers: 1, d_model: 8, block: 16, steps: 2, warmup: 1, microbatches: 1 };
    let r = bench(&cfg, &Device::flex()).unwrap();
    assert_eq!(r.tokens_per_step, 4 * 15);
    assert!(r.packed);
    assert_eq!(r.step_seconds.len(), 2);
    assert!(r.tokens_per_sec.is_finite() && r.tokens_per_sec > 0.0);
    // tok + pos + (2 LN + qkv + proj + fc1 + fc2) + final LN + head.
    let (v, d) = (r.vocab, 8);
    let block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
    assert_eq!(r.params, v * d + 16 * d + block + 2 * d + d * v + v);
    let bad = BenchConfig { d_model: 10, ..cfg };
    assert!(bench(&bad, &Device::flex()).is_err(), "4 heads must divide d_model");
}
