import Synchronization
import Testing
@testable import NotifierEngine

/// `insertIntervalWithoutWaiting`: the insert for an owner that registered first and must never
/// wait (libfabric's `subscribe`, under its own lock). Refused only where an invalidation in
/// flight overlaps and has already looked for subscribers; everywhere else the subscription sees
/// every later change, including those that begin while its insert is deferred. Deterministic:
/// each invalidation is held open by the test itself.
@Suite("Inserts that never wait")
struct InsertWithoutWaitingTests {
    func subscription(_ space: AddressSpace, _ start: UInt, _ length: UInt) throws -> CountingSubscription {
        try CountingSubscription(space: space, range: range(start, length))
    }

    @Test func refusedOnlyWhereAnInvalidationInFlightOverlaps() throws {
        let space = AddressSpace()
        let inFlight = try space.invalidateRangeStart(range(0x10_0000, 0x2000), event: .unmap)
        let overlapping = try subscription(space, 0x10_1000, 0x2000)
        #expect(try space.insertIntervalWithoutWaiting(overlapping) == nil)
        let elsewhere = try subscription(space, 0x40_0000, 0x1000)
        let token = try #require(try space.insertIntervalWithoutWaiting(elsewhere))
        #expect(space.intervalCount == 1, "only the unrelated one is in")
        inFlight.end()
        #expect(!elsewhere.readRetry(token))
        space.invalidate(range(0x40_0000, 0x10), event: .unmap)
        #expect(elsewhere.calls.load(ordering: .relaxed) == 1)
        #expect(elsewhere.readRetry(token))
        // Once nothing is in flight, the refused range subscribes.
        #expect(try space.insertIntervalWithoutWaiting(overlapping) != nil)
        try overlapping.remove()
        try elsewhere.remove()
        #expect(space.intervalCount == 0)
    }

    @Test func aDeferredInsertIsCalledAtOnceByAnOverlappingInvalidation() throws {
        let space = AddressSpace()
        let window = space.beginInvalidation()  // the tree may be walked: inserts are deferred
        let first = try subscription(space, 0x80_0000, 0x1000)
        let firstToken = try #require(try space.insertIntervalWithoutWaiting(first))
        let second = try subscription(space, 0x90_0000, 0x1000)
        let secondToken = try #require(try space.insertIntervalWithoutWaiting(second))
        #expect(space.intervalCount == 0, "deferred while the window is open")
        // The window's range reaches the deferred insert now, not when the window ends.
        window.invalidate(range(0x80_0800, 0x100), event: .unmap)
        #expect(first.calls.load(ordering: .relaxed) == 1)
        #expect(first.readRetry(firstToken))
        // So does an invalidation of a known range that begins meanwhile.
        let other = try space.invalidateRangeStart(range(0x90_0000, 0x10), event: .remove)
        #expect(second.calls.load(ordering: .relaxed) == 1)
        #expect(second.readRetry(secondToken))
        // What the window already invalidated refuses a new overlapping subscription.
        let late = try subscription(space, 0x80_0000, 0x1000)
        #expect(try space.insertIntervalWithoutWaiting(late) == nil)
        other.end()
        window.end()
        #expect(space.intervalCount == 2)
        // In the tree now: later changes reach them the ordinary way.
        space.invalidate(range(0x80_0000, 0x10), event: .unmap)
        #expect(first.calls.load(ordering: .relaxed) == 2)
        #expect(second.calls.load(ordering: .relaxed) == 1)
        #expect(try space.insertIntervalWithoutWaiting(late) != nil)
        for sub in [first, second, late] { try sub.remove() }
        #expect(space.intervalCount == 0)
    }

    /// What an invalidation looked at stops refusing when that invalidation ends, even while
    /// others are still in flight (each has its own slot of walked ranges).
    @Test func anEndedInvalidationRefusesNothingWhileOthersRun() throws {
        let space = AddressSpace()
        let window = space.beginInvalidation()
        window.invalidate(range(0x900_0000, 0x1000), event: .unmap)
        let unrelated = try space.invalidateRangeStart(range(0xA00_0000, 0x1000), event: .unmap)
        let ended = try space.invalidateRangeStart(range(0x10_0000, 0x1000), event: .unmap)
        let sub = try subscription(space, 0x10_0000, 0x1000)
        #expect(try space.insertIntervalWithoutWaiting(sub) == nil, "overlaps an invalidation in flight")
        ended.end()
        let token = try #require(try space.insertIntervalWithoutWaiting(sub), "refused by an invalidation that ended")
        let nearWindow = try subscription(space, 0x900_0000, 0x1000)
        #expect(try space.insertIntervalWithoutWaiting(nearWindow) == nil, "overlaps what the open window invalidated")
        unrelated.end()
        window.end()
        #expect(try space.insertIntervalWithoutWaiting(nearWindow) != nil)
        space.invalidate(range(0x10_0000, 0x10), event: .unmap)
        #expect(sub.calls.load(ordering: .relaxed) == 1)
        #expect(sub.readRetry(token))
        try sub.remove()
        try nearWindow.remove()
    }

    @Test func aWindowThatNeverTouchesItRefusesNothingAndLeavesItValid() throws {
        let space = AddressSpace()
        let window = space.beginInvalidation()
        let sub = try subscription(space, 0x100_0000, 0x4000)
        let token = try #require(try space.insertIntervalWithoutWaiting(sub))
        window.invalidate(range(0x200_0000, 0x1000), event: .unmap)
        window.end()
        #expect(space.intervalCount == 1)
        #expect(sub.calls.load(ordering: .relaxed) == 0)
        #expect(!sub.readRetry(token))
        try sub.remove()
    }

    @Test func aDeferredInsertRemovedBeforeTheInvalidationIsNeverCalled() throws {
        let space = AddressSpace()
        let window = space.beginInvalidation()
        let sub = try subscription(space, 0x300_0000, 0x1000)
        _ = try #require(try space.insertIntervalWithoutWaiting(sub))
        try sub.removeWithoutWaiting()
        window.invalidate(range(0x300_0000, 0x1000), event: .unmap)
        window.end()
        #expect(sub.calls.load(ordering: .relaxed) == 0)
        #expect(space.intervalCount == 0)
    }
}
