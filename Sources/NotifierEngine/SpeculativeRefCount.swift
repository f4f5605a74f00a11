import Synchronization

/// A reference count for lock-free lookups (seed 004, `page_cache_get_speculative`): a lookup
/// inside a read section takes a reference only if the count is not zero, then re-checks that
/// what it found is still current; eviction `freeze`s the count (compare-and-swap from the
/// count it expects, i.e. only its own references, to zero), so the eviction and a racing
/// lookup cannot both win. A frozen count stays zero until `unfreeze`: `getUnlessZero` never
/// resurrects it.
public struct SpeculativeRefCount: ~Copyable, Sendable {
    private let raw: Atomic<Int>

    public init(_ initial: Int = 1) { raw = Atomic(max(0, initial)) }

    /// Current value (racy by nature; for tests and statistics).
    public var value: Int { raw.load(ordering: .relaxed) }

    /// Takes a reference unless the count is zero (freed or frozen). Acquire ordering: what the
    /// last holder wrote is visible once this returns true.
    public func getUnlessZero() -> Bool {
        var current = raw.load(ordering: .relaxed)
        while current != 0 {
            let (exchanged, original) = raw.compareExchange(
                expected: current, desired: current + 1,
                successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Takes a reference the caller knows is safe (it already holds one).
    public func get() throws(NotifierError) {
        if raw.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
            raw.wrappingSubtract(1, ordering: .relaxed)
            throw .referenceCountMisuse("get() on a zero or frozen count; use getUnlessZero()")
        }
    }

    /// Drops a reference; returns true when it was the last (the caller frees).
    public func put() throws(NotifierError) -> Bool {
        var current = raw.load(ordering: .relaxed)
        while true {
            guard current > 0 else {
                throw .referenceCountMisuse("put() on a zero or frozen count")
            }
            let (exchanged, original) = raw.compareExchange(
                expected: current, desired: current - 1,
                successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if exchanged { return current == 1 }
            current = original
        }
    }

    /// Sets the count to zero if it is exactly `expected` (`page_ref_freeze`). On success no
    /// lookup can take a reference until `unfreeze`.
    public func freeze(expected: Int) -> Bool {
        guard expected > 0 else { return false }
        return raw.compareExchange(
            expected: expected, desired: 0,
            successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed).exchanged
    }

    /// Undoes a freeze, publishing `count` (`page_ref_unfreeze`): the eviction changed its mind.
    public func unfreeze(_ count: Int) throws(NotifierError) {
        guard count > 0 else { throw .referenceCountMisuse("unfreeze(\(count)): must be positive") }
        let (exchanged, _) = raw.compareExchange(
            expected: 0, desired: count, successOrdering: .releasing, failureOrdering: .relaxed)
        if !exchanged { throw .referenceCountMisuse("unfreeze() of a count that is not frozen") }
    }
}
