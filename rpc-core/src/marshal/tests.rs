use std::io::IoSlice;

use proptest::prelude::*;

use super::*;

fn addr(s: &[u8]) -> (usize, usize) {
    (s.as_ptr() as usize, s.len())
}

#[test]
fn scalars_and_short_slices_coalesce_into_one_inline_segment() {
    let short = [9u8; COPY_THRESHOLD];
    let mut enc = Encoder::new();
    enc.put_u32(0x0403_0201);
    enc.put_bytes(&short);
    enc.put_u8(5);
    enc.put_u16(0x0706);
    enc.put_u64(u64::MAX);
    assert_eq!(enc.segment_count(), 1);
    assert_eq!(enc.len(), 4 + COPY_THRESHOLD + 1 + 2 + 8);
    let mut expected = vec![1, 2, 3, 4];
    expected.extend_from_slice(&short);
    expected.extend_from_slice(&[5, 6, 7]);
    expected.extend_from_slice(&[0xff; 8]);
    assert_eq!(enc.to_vec(), expected);
    assert!(!enc.spilled());
}

#[test]
fn long_slices_are_borrowed_between_inline_segments() {
    let long = vec![7u8; COPY_THRESHOLD + 1];
    let mut enc = Encoder::new();
    enc.put_u32(1);
    enc.put_bytes(&long);
    enc.put_u32(2);
    enc.put_u32(3);
    let segments: Vec<&[u8]> = enc.segments().collect();
    assert_eq!(segments.len(), 3, "inline, borrowed, inline (coalesced)");
    assert_eq!(addr(segments[1]), addr(&long), "the caller's memory itself");
    assert_eq!(segments[2], [2, 0, 0, 0, 3, 0, 0, 0]);
}

#[test]
fn empty_puts_add_nothing() {
    let mut enc = Encoder::new();
    enc.put_bytes(&[]);
    enc.put_inline(&[]);
    assert!(enc.is_empty());
    assert_eq!(enc.segment_count(), 0);
    assert_eq!(enc.to_vec(), Vec::<u8>::new());
}

/// A message of `n` borrowed slices, each after a `u32` length, and its bytes.
fn many_slices(storage: &[Vec<u8>]) -> (Encoder<'_>, Vec<u8>) {
    let mut enc = Encoder::new();
    let mut expected = Vec::new();
    for s in storage {
        enc.put_len(s.len());
        enc.put_bytes(s);
        expected.extend_from_slice(&(s.len() as u32).to_le_bytes());
        expected.extend_from_slice(s);
    }
    (enc, expected)
}

#[test]
fn more_slices_than_segments_spill_and_still_round_trip() {
    let storage: Vec<Vec<u8>> = (0..200u32)
        .map(|i| vec![i as u8; 40 + i as usize])
        .collect();
    let (enc, expected) = many_slices(&storage);
    assert!(enc.spilled());
    assert_eq!(enc.segment_count(), MAX_SEGMENTS);
    assert_eq!(enc.len(), expected.len());
    assert_eq!(enc.to_vec(), expected);
    // The slices described before the spill are still the caller's own.
    let first_borrowed = enc.segments().nth(1).unwrap();
    assert_eq!(addr(first_borrowed), addr(&storage[0]));

    let bytes = enc.to_vec();
    let mut dec = Decoder::new(&bytes);
    for s in &storage {
        let got: &[u8] = dec.get().unwrap();
        assert_eq!(got, &s[..]);
    }
    dec.finish().unwrap();
}

#[test]
fn more_inline_bytes_than_capacity_spill_and_still_round_trip() {
    let values: Vec<u64> = (0..10_000).map(|i| i * 0x0101_0101).collect();
    assert!(8 * values.len() > MAX_INLINE);
    let enc = encode(&values);
    assert!(enc.spilled());
    assert!(enc.segment_count() <= MAX_SEGMENTS);
    assert_eq!(enc.len(), 4 + 8 * values.len());
    let bytes = enc.to_vec();
    assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), values);
}

#[test]
fn a_descriptor_within_capacity_does_not_allocate() {
    // Each slice takes two segments: its length prefix (inline) and its bytes.
    let storage: Vec<Vec<u8>> = (0..(INLINE_SEGMENTS as u32 / 2))
        .map(|i| vec![i as u8; 100])
        .collect();
    let (enc, expected) = many_slices(&storage);
    assert_eq!(enc.segment_count(), INLINE_SEGMENTS);
    assert!(!enc.spilled());
    assert!(!enc.allocated());
    assert_eq!(enc.to_vec(), expected);
}

#[test]
fn past_its_in_place_capacity_a_descriptor_allocates_but_still_borrows() {
    let storage: Vec<Vec<u8>> = (0..(MAX_SEGMENTS as u32 / 2 - 1))
        .map(|i| vec![i as u8; 100])
        .collect();
    let (enc, expected) = many_slices(&storage);
    assert_eq!(enc.segment_count(), MAX_SEGMENTS - 2);
    assert!(enc.allocated());
    assert!(!enc.spilled());
    // Every slice is still the caller's own memory, the last ones included.
    for (i, s) in storage.iter().enumerate() {
        let seg = enc.segments().nth(2 * i + 1).unwrap();
        assert_eq!(addr(seg), addr(s));
    }
    assert_eq!(enc.to_vec(), expected);
    // As is a slice after more inline bytes than the in-place area holds.
    let big = vec![7u8; 100];
    let mut enc = Encoder::new();
    for v in 0..INLINE_CAPACITY as u64 {
        enc.put_u64(v);
    }
    enc.put_bytes(&big);
    assert!(enc.allocated());
    assert!(!enc.spilled());
    assert_eq!(addr(enc.segments().last().unwrap()), addr(&big));
}

/// The bytes that `gather` reports for `range`.
fn gathered(enc: &Encoder<'_>, range: Range<usize>) -> Vec<u8> {
    let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
    let n = enc.gather(range, &mut slices);
    slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
}

fn visited(enc: &Encoder<'_>, range: Range<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    enc.for_each_in(range, |s| out.extend_from_slice(s));
    out
}

#[test]
fn gather_with_a_short_output_leaves_the_rest_out() {
    let long = vec![1u8; 100];
    let mut enc = Encoder::new();
    enc.put_u8(0);
    enc.put_bytes(&long);
    enc.put_u8(2);
    let mut slices = [IoSlice::new(&[]); 2];
    assert_eq!(enc.gather(0..enc.len(), &mut slices), 2);
    assert_eq!(slices.iter().map(|s| s.len()).sum::<usize>(), 101);
}

#[test]
#[expect(
    clippy::reversed_empty_ranges,
    reason = "an inverted range, on purpose"
)]
fn empty_and_inverted_ranges_cover_nothing() {
    let long = vec![1u8; 100];
    let mut enc = Encoder::new();
    enc.put_u32(7);
    enc.put_bytes(&long);
    for range in [0..0, 4..4, 50..50, 60..10, 200..300] {
        assert_eq!(gathered(&enc, range.clone()), Vec::<u8>::new(), "{range:?}");
        assert_eq!(visited(&enc, range.clone()), Vec::<u8>::new(), "{range:?}");
    }
}

#[derive(Clone, Debug)]
enum Op {
    U32(u32),
    Inline(Vec<u8>),
    Borrowed(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u32>().prop_map(Op::U32),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Inline),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Op::Borrowed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any mix of puts, within capacity or spilling, and any range: the slices `gather` and
    /// `for_each_in` report are exactly those bytes of the message.
    #[test]
    fn gather_over_any_range_reproduces_the_bytes(
        ops in proptest::collection::vec(op(), 0..150),
        a in 0usize..20_000,
        b in 0usize..20_000,
    ) {
        let mut enc = Encoder::new();
        let mut expected = Vec::new();
        for op in &ops {
            match op {
                Op::U32(v) => {
                    enc.put_u32(*v);
                    expected.extend_from_slice(&v.to_le_bytes());
                }
                Op::Inline(bytes) => {
                    enc.put_inline(bytes);
                    expected.extend_from_slice(bytes);
                }
                Op::Borrowed(bytes) => {
                    enc.put_bytes(bytes);
                    expected.extend_from_slice(bytes);
                }
            }
        }
        prop_assert_eq!(enc.len(), expected.len());
        prop_assert!(enc.segment_count() <= MAX_SEGMENTS);
        prop_assert_eq!(&enc.to_vec(), &expected);
        prop_assert!(enc.segments().all(|s| !s.is_empty()));

        let len = expected.len();
        let (lo, hi) = (a % (len + 10), b % (len + 10));
        let want = if lo < hi && lo < len { expected[lo..hi.min(len)].to_vec() } else { Vec::new() };
        prop_assert_eq!(&gathered(&enc, lo..hi), &want);
        prop_assert_eq!(&visited(&enc, lo..hi), &want);

        // Splitting the message into consecutive ranges (as fragmentation does) loses nothing.
        let step = 1 + a % 1500;
        let mut joined = Vec::new();
        for start in (0..len).step_by(step) {
            joined.extend(gathered(&enc, start..(start + step).min(len)));
        }
        prop_assert_eq!(joined, expected);
    }
}

#[test]
fn length_claims_beyond_the_input_are_refused() {
    let claim = |count: u32, rest: usize| {
        let mut bytes = count.to_le_bytes().to_vec();
        bytes.resize(4 + rest, 0);
        bytes
    };
    assert_eq!(
        decode::<&[u8]>(&claim(u32::MAX, 16)),
        Err(DecodeError::LengthOverflow)
    );
    assert_eq!(
        decode::<&str>(&claim(17, 16)),
        Err(DecodeError::LengthOverflow)
    );
    assert_eq!(
        decode::<Vec<u8>>(&claim(17, 16)),
        Err(DecodeError::LengthOverflow)
    );
    assert_eq!(
        decode::<Vec<u64>>(&claim(3, 16)),
        Err(DecodeError::LengthOverflow)
    );
    assert_eq!(
        decode::<Vec<u64>>(&claim(2, 16)),
        Ok(vec![0, 0]),
        "an exact fit"
    );
    // Elements of no size count as one byte: a count cannot make a decoder loop for nothing.
    assert_eq!(
        decode::<Vec<()>>(&claim(u32::MAX, 0)),
        Err(DecodeError::LengthOverflow)
    );
    assert_eq!(
        decode::<Vec<()>>(&claim(3, 3)),
        Err(DecodeError::TrailingBytes)
    );
    // Nested sequences: each inner count is checked against what is left.
    assert_eq!(decode::<Vec<Vec<u8>>>(&claim(4, 16)), Ok(vec![vec![]; 4]));
    let mut nested = claim(1, 0);
    nested.extend_from_slice(&100u32.to_le_bytes());
    nested.extend_from_slice(&[0; 99]);
    assert_eq!(
        decode::<Vec<Vec<u8>>>(&nested),
        Err(DecodeError::LengthOverflow)
    );
    // A count of u32 (elements of 4 bytes) claiming more than fits.
    assert_eq!(
        decode::<Vec<u32>>(&claim(5, 19)),
        Err(DecodeError::LengthOverflow)
    );
    assert_eq!(decode::<[u64; 3]>(&[0; 23]), Err(DecodeError::Truncated));
    // The decoder's raw count reader.
    let bytes = claim(10, 20);
    let mut dec = Decoder::new(&bytes);
    assert_eq!(dec.get_len(2), Ok(10));
    let mut dec = Decoder::new(&bytes);
    assert_eq!(dec.get_len(3), Err(DecodeError::LengthOverflow));
    let mut dec = Decoder::new(&bytes[..3]);
    assert_eq!(dec.get_len(1), Err(DecodeError::Truncated));
}

#[test]
fn encoding_saturates_counts_the_peer_refuses() {
    let mut enc = Encoder::new();
    enc.put_len(usize::MAX);
    assert_eq!(enc.to_vec(), u32::MAX.to_le_bytes());
}

#[test]
fn nesting_is_bounded() {
    fn descend(dec: &mut Decoder<'_>, levels: u32) -> Result<u32, DecodeError> {
        if levels == 0 {
            return Ok(0);
        }
        dec.nested(|dec| descend(dec, levels - 1).map(|n| n + 1))
    }
    let mut dec = Decoder::new(&[]);
    assert_eq!(descend(&mut dec, MAX_DEPTH), Ok(MAX_DEPTH));
    assert_eq!(descend(&mut dec, MAX_DEPTH + 1), Err(DecodeError::TooDeep));
    // The depth comes back down after an error.
    assert_eq!(descend(&mut dec, MAX_DEPTH), Ok(MAX_DEPTH));
}

#[test]
fn decoders_borrow_from_the_input() {
    let long = [3u8; 100];
    let text = "a string longer than the copy threshold, to be borrowed";
    let mut enc = Encoder::new();
    enc.put(&long[..]);
    enc.put(text);
    let bytes = enc.to_vec();
    let (b, s): (&[u8], &str) = decode(&bytes).unwrap();
    let range = bytes.as_ptr_range();
    assert!(range.contains(&b.as_ptr()) && range.contains(&s.as_ptr()));
    assert_eq!((b, s), (&long[..], text));
}
