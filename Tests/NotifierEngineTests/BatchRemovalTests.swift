import Testing
@testable import NotifierEngine

/// `removeIntervalsWithoutWaiting`: the batch form of `removeIntervalWithoutWaiting` (a cache
/// evicting many entries takes the interval lock once). Each subscription leaves as it would
/// alone: at once when no invalidation is in flight, at the end of the one in flight otherwise
/// (its callbacks may still come until then); what is not in the space is skipped.
@Suite("Removing subscriptions in a batch")
struct BatchRemovalTests {
    @Test func removesWhatIsInTheTreeAndSkipsTheRest() throws {
        let space = AddressSpace()
        let other = AddressSpace()
        let subs = try (0..<8).map { try CountingSubscription(space: space, range: range(0x10_0000 + $0 * 0x2000, 0x1000)) }
        for sub in subs { try space.insertInterval(sub) }
        let neverInserted = try CountingSubscription(space: space, range: range(0x80_0000, 0x1000))
        let foreign = try CountingSubscription(space: other, range: range(0x10_0000, 0x1000))
        try other.insertInterval(foreign)
        try subs[0].remove()

        let removed = space.removeIntervalsWithoutWaiting((subs + [neverInserted, foreign]).map { .passUnretained($0) })
        #expect(removed == 7, "the seven still in the tree; the removed, the never inserted and the foreign one skipped")
        #expect(space.intervalCount == 0)
        #expect(other.intervalCount == 1, "another space's subscription is left alone")
        #expect(subs.allSatisfy { $0.isRemoved })
        #expect(throws: NotifierError.alreadyRemoved) { try subs[3].remove() }
        space.invalidate(range(0x10_0000, 0x10_0000), event: .unmap)
        #expect(subs.allSatisfy { $0.calls.load(ordering: .relaxed) == 0 }, "out of the tree: never called again")
        try foreign.remove()
    }

    @Test func duringAnInvalidationTheRemovalWaitsForItsEnd() throws {
        let space = AddressSpace()
        let subs = try (0..<4).map { try CountingSubscription(space: space, range: range(0x10_0000 + $0 * 0x2000, 0x1000)) }
        for sub in subs { try space.insertInterval(sub) }
        let inFlight = try space.invalidateRangeStart(range(0x10_0000, 0x1000), event: .unmap)
        #expect(subs[0].calls.load(ordering: .relaxed) == 1)

        #expect(space.removeIntervalsWithoutWaiting(subs.map { .passUnretained($0) }) == 4, "deferred, not refused")
        #expect(space.intervalCount == 4, "still in the tree the invalidation walks")
        #expect(subs.allSatisfy { $0.isRemoved })
        inFlight.end()
        #expect(space.intervalCount == 0, "applied when the invalidation ended")
        space.invalidate(range(0x10_0000, 0x10_0000), event: .unmap)
        #expect(subs[0].calls.load(ordering: .relaxed) == 1)
        #expect(subs[1].calls.load(ordering: .relaxed) == 0)
    }
}
