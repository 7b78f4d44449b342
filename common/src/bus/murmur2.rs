//! Kafka's key → partition function (the Java client's `murmur2`, which librdkafka calls
//! `murmur2_random`). NATS subjects and the in-memory bus use it too, so one order lands on the
//! same partition number whichever bus carries it and whichever client produced it.

/// Kafka's murmur2 hash of `key` (seed `0x9747b28c`), as a signed 32-bit value like Java's.
pub fn murmur2(key: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Kafka hashes at most i32::MAX bytes; keys are order refs, far below that.
    let length = key.len() as u32;
    let mut hash = SEED ^ length;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (index, byte) in rest.iter().enumerate().rev() {
            hash ^= u32::from(*byte) << (8 * index);
        }
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash as i32
}

/// The partition of `key` among `partitions`, as Kafka's default partitioner picks it.
///
/// # Panics
/// When `partitions` is 0.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) as u32 % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Apache Kafka's own tests of `Utils.murmur2`.
    #[test]
    fn matches_kafka_java_client() {
        for (key, expected) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), expected, "{key}");
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for key in ["HD_387_56", "", "a", "order-123456"] {
            let partition = partition_for_key(key.as_bytes(), 12);
            assert!(partition < 12);
            assert_eq!(partition, partition_for_key(key.as_bytes(), 12));
        }
    }
}
