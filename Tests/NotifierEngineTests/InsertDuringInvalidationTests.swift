import Testing
@testable import NotifierEngine

/// `insertInterval` while invalidations are in flight: a subscription none of them looked for
/// starts without waiting for them (a miss is not held up by another thread's munmap of other
/// memory), yet sees every change that begins meanwhile; one whose range an invalidation in
/// flight already looked at waits for its end, as the kernel's does. Deterministic: each
/// invalidation is held open by the test, and "would wait" is read from the state `readBegin`
/// tests (the subscription's sequence equals the space's odd one).
@Suite("Inserts during unrelated invalidations")
struct InsertDuringInvalidationTests {
    /// Whether `readBegin` of `sub` would wait now (no window is open in these tests).
    func wouldWait(_ sub: IntervalSubscription, in space: AddressSpace) -> Bool {
        sub.sequence.load(ordering: .acquiring) == space.intervalSequence.load(ordering: .acquiring)
    }

    @Test func anUnrelatedInsertStartsAtOnceAndSeesLaterChanges() throws {
        let space = AddressSpace()
        let busy = try CountingSubscription(space: space, range: range(0x10_0000, 0x1000))
        try space.insertInterval(busy)
        let inFlight = try space.invalidateRangeStart(range(0x10_0000, 0x1000), event: .unmap)
        #expect(space.intervalSequence.load(ordering: .acquiring) & 1 == 1, "the tree is being walked")

        let unrelated = try CountingSubscription(space: space, range: range(0x40_0000, 0x1000))
        try space.insertInterval(unrelated)
        // Checked first: a readBegin that waited would wait here for good (the test holds the
        // invalidation open).
        try #require(!wouldWait(unrelated, in: space), "unrelated to the invalidation in flight")
        var token = try unrelated.readBegin()
        #expect(space.intervalCount == 1, "deferred while the tree is walked")

        // A change of its range that begins meanwhile reaches it at once, and from then on its
        // readBegin waits for the end, when its insert is in the tree.
        let overlapping = try space.invalidateRangeStart(range(0x40_0800, 0x100), event: .remove)
        #expect(unrelated.calls.load(ordering: .relaxed) == 1)
        #expect(unrelated.readRetry(token))
        #expect(wouldWait(unrelated, in: space))
        overlapping.end()
        inFlight.end()
        #expect(space.intervalCount == 2)
        #expect(!wouldWait(unrelated, in: space))
        token = try unrelated.readBegin()
        space.invalidate(range(0x40_0000, 0x10), event: .unmap)
        #expect(unrelated.calls.load(ordering: .relaxed) == 2, "in the tree: reached the ordinary way")
        #expect(unrelated.readRetry(token))
        for sub in [busy, unrelated] { try sub.remove() }
        #expect(space.intervalCount == 0)
    }

    @Test func anInsertWhereAnInvalidationLookedWaitsForItsEnd() throws {
        let space = AddressSpace()
        let busy = try CountingSubscription(space: space, range: range(0x10_0000, 0x2000))
        try space.insertInterval(busy)
        let inFlight = try space.invalidateRangeStart(range(0x10_0000, 0x2000), event: .unmap)
        let overlapping = try CountingSubscription(space: space, range: range(0x10_1000, 0x2000))
        try space.insertInterval(overlapping)
        #expect(wouldWait(overlapping, in: space), "the invalidation in flight looked there already")
        #expect(overlapping.calls.load(ordering: .relaxed) == 0, "and will not call it")
        inFlight.end()
        #expect(!wouldWait(overlapping, in: space))
        #expect(space.intervalCount == 2)
        for sub in [busy, overlapping] { try sub.remove() }
    }

    /// An invalidation that found no subscriber leaves the tree unwalked (sequence even): an
    /// unrelated insert goes into the tree at once, and an overlapping one still waits.
    @Test func anInvalidationWithoutSubscribersHoldsUpOnlyItsOwnRange() throws {
        let space = AddressSpace()
        let inFlight = try space.invalidateRangeStart(range(0x20_0000, 0x1000), event: .unmap)
        #expect(space.intervalSequence.load(ordering: .acquiring) & 1 == 0)
        let unrelated = try CountingSubscription(space: space, range: range(0x30_0000, 0x1000))
        try space.insertInterval(unrelated)
        #expect(space.intervalCount == 1 && !wouldWait(unrelated, in: space))
        let overlapping = try CountingSubscription(space: space, range: range(0x20_0000, 0x1000))
        try space.insertInterval(overlapping)
        #expect(wouldWait(overlapping, in: space))
        inFlight.end()
        #expect(!wouldWait(overlapping, in: space))
        for sub in [unrelated, overlapping] { try sub.remove() }
        #expect(space.intervalCount == 0)
    }
}
