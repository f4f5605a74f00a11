import Synchronization
import Testing
@testable import NotifierEngine

/// A notifier that records what reached it.
final class RecordingNotifier: MMUNotifier {
    struct Log {
        var starts: [InvalidationRange] = []
        var ends: [InvalidationRange] = []
        var releases = 0
    }
    let log = Locked(Log())
    let refuseNonBlocking: Bool
    let young = Atomic<Bool>(false)
    let onStart: (@Sendable (AddressSpace) -> Void)?
    let onRelease: (@Sendable (RecordingNotifier, AddressSpace) -> Void)?

    init(refuseNonBlocking: Bool = false,
         onStart: (@Sendable (AddressSpace) -> Void)? = nil,
         onRelease: (@Sendable (RecordingNotifier, AddressSpace) -> Void)? = nil) {
        self.refuseNonBlocking = refuseNonBlocking
        self.onStart = onStart
        self.onRelease = onRelease
    }

    func invalidateRangeStart(_ range: InvalidationRange, in space: AddressSpace) -> Bool {
        log.withLock { $0.starts.append(range) }
        onStart?(space)
        return !(refuseNonBlocking && !range.blockable)
    }
    func invalidateRangeEnd(_ range: InvalidationRange, in space: AddressSpace) {
        log.withLock { $0.ends.append(range) }
    }
    func clearYoung(_ range: AddressRange, in space: AddressSpace) -> Bool {
        young.exchange(false, ordering: .relaxed)
    }
    func testYoung(_ range: AddressRange, in space: AddressSpace) -> Bool {
        young.load(ordering: .relaxed)
    }
    func release(_ space: AddressSpace) {
        log.withLock { $0.releases += 1 }
        onRelease?(self, space)
    }
    var starts: Int { log.withLock { $0.starts.count } }
    var ends: Int { log.withLock { $0.ends.count } }
    var releases: Int { log.withLock { $0.releases } }
}

final class CountingShared: SharedMMUNotifier {
    static let made = Atomic<Int>(0)
    let freed = Atomic<Bool>(false)
    static func make(for space: AddressSpace) -> CountingShared {
        made.wrappingAdd(1, ordering: .relaxed)
        return CountingShared()
    }
    func free() { freed.store(true, ordering: .releasing) }
}

@Suite("Address space notifiers")
struct AddressSpaceTests {
    @Test func invalidationReachesRegisteredNotifiersWithItsCause() throws {
        let space = AddressSpace()
        let a = RecordingNotifier(), b = RecordingNotifier()
        try space.register(a)
        try space.register(b)
        space.invalidate(range(0x1000, 0x2000), event: .unmap)
        let token = try space.invalidateRangeStart(range(0x8000, 0x1000), event: .remap)
        #expect(a.starts == 2 && a.ends == 1)
        token.end()
        #expect(a.ends == 2 && b.ends == 2)
        let log = a.log.withLock { $0 }
        #expect(log.starts.map(\.event) == [.unmap, .remap])
        #expect(log.starts[0].range == range(0x1000, 0x2000))
        #expect(log.starts[0].blockable)
    }

    @Test func emptyRangeReachesNobody() throws {
        let space = AddressSpace()
        let a = RecordingNotifier()
        try space.register(a)
        let empty = try AddressRange(start: 0x1000, length: 0)
        #expect(empty.isEmpty && empty.length == 0)
        space.invalidate(empty, event: .explicit)
        try space.invalidateRangeStart(empty, event: .explicit).end()
        #expect(a.starts == 0)
        #expect(!empty.overlaps(range(0, 0x10000)))
    }

    @Test func rangeAtTheTopOfTheAddressSpace() throws {
        let top = try AddressRange(start: UInt.max - 4095, length: 4096)
        #expect(top.last == UInt.max)
        #expect(top.length == 4096)
        #expect(throws: NotifierError.rangeOverflow(start: UInt.max - 4095, length: 4097)) {
            _ = try AddressRange(start: UInt.max - 4095, length: 4097)
        }
        #expect(AddressRange.everything.length == nil)
        #expect(AddressRange.everything.overlaps(top))
        let space = AddressSpace()
        let hits = Atomic<Int>(0)
        let sub = try space.insertInterval(top) { s, _, seq in
            s.setSequence(seq)
            hits.wrappingAdd(1, ordering: .relaxed)
            return true
        }
        space.invalidate(try AddressRange(start: UInt.max, length: 1), event: .unmap)
        space.invalidate(range(0, 4096), event: .unmap)
        let check38 = hits.load(ordering: .relaxed) == 1
        #expect(check38)
        try sub.remove()
    }

    @Test func registerTwiceAndUnregisterTwiceAreErrors() throws {
        let space = AddressSpace()
        let a = RecordingNotifier()
        try space.register(a)
        #expect(throws: NotifierError.alreadyRegistered) { try space.register(a) }
        try space.unregister(a)
        #expect(a.releases == 1)
        #expect(throws: NotifierError.notRegistered) { try space.unregister(a) }
        #expect(throws: NotifierError.notRegistered) { try space.unregisterNoRelease(a) }
        space.invalidate(range(0, 4096), event: .unmap)
        #expect(a.starts == 0)
        #expect(a.releases == 1)
    }

    @Test func unregisterNoReleaseSkipsReleaseAndStopsCallbacks() throws {
        let space = AddressSpace()
        let a = RecordingNotifier()
        try space.register(a)
        try space.unregisterNoRelease(a)
        space.invalidate(range(0, 4096), event: .unmap)
        try space.release()
        #expect(a.starts == 0 && a.releases == 0)
    }

    @Test func nonBlockableRefusalRollsBack() throws {
        let space = AddressSpace()
        let first = RecordingNotifier(), refuser = RecordingNotifier(refuseNonBlocking: true)
        try space.register(first)
        try space.register(refuser)
        #expect(throws: NotifierError.wouldBlock) {
            _ = try space.invalidateRangeStart(range(0, 4096), event: .unmap, blockable: false)
        }
        #expect(first.starts == 1 && first.ends == 1, "the started notifier gets its end")
        #expect(refuser.ends == 0)
        #expect(space.invalidateSequence & 1 == 0)
        // Blockable: a refusal is not allowed and is ignored.
        try space.invalidateRangeStart(range(0, 4096), event: .unmap, blockable: true).end()
        #expect(refuser.ends == 1)
    }

    @Test func releaseCallsEachReleaseOnceThenNothingReachesThem() throws {
        let space = AddressSpace()
        let notifiers = (0..<5).map { _ in RecordingNotifier() }
        for n in notifiers { try space.register(n) }
        try space.release()
        try space.release()
        for n in notifiers { #expect(n.releases == 1) }
        space.invalidate(range(0, 4096), event: .unmap)
        #expect(!space.clearYoung(range(0, 4096)))
        for n in notifiers { #expect(n.starts == 0) }
        #expect(throws: NotifierError.spaceReleased) { try space.register(RecordingNotifier()) }
        #expect(throws: NotifierError.spaceReleased) { _ = try space.insertInterval(range(0, 1)) { _, _, _ in true } }
        // Unregister after release: allowed, no second release (kernel semantics).
        try space.unregister(notifiers[0])
        #expect(notifiers[0].releases == 1)
    }

    @Test func releaseCallbackUnregistersAndFreesItselfThroughCall() throws {
        let space = AddressSpace()
        let freed = Atomic<Bool>(false)
        let sawFreedInCallback = Atomic<Bool>(false)
        let n = RecordingNotifier(onRelease: { me, space in
            do throws(NotifierError) { try space.unregisterNoRelease(me) } catch { Issue.record("\(error)") }
            space.srcu.call { freed.store(true, ordering: .releasing) }
            sleepMicroseconds(10_000)  // still inside the callback: not freed yet
            if freed.load(ordering: .acquiring) { sawFreedInCallback.store(true, ordering: .relaxed) }
        })
        try space.register(n)
        try space.release()
        try space.srcu.barrier()
        let check39 = freed.load(ordering: .acquiring)
        #expect(check39)
        let check40 = !sawFreedInCallback.load(ordering: .relaxed)
        #expect(check40)
        #expect(n.releases == 1)
        #expect(space.notifierCount == 0)
    }

    @Test func unregisterInsideACallbackRefusesAndNoReleaseWorks() throws {
        let space = AddressSpace()
        let errors = Locked<[NotifierError]>([])
        let box = Locked<RecordingNotifier?>(nil)
        let n = RecordingNotifier(onStart: { space in
            guard let me = box.withLock({ $0 }) else { return }
            do throws(NotifierError) { try space.unregister(me) } catch { errors.withLock { $0.append(error) } }
            do throws(NotifierError) { try space.unregisterNoRelease(me) } catch { errors.withLock { $0.append(error) } }
        })
        box.withLock { $0 = n }
        try space.register(n)
        space.invalidate(range(0, 4096), event: .explicit)
        space.invalidate(range(0, 4096), event: .explicit)
        let check41 = errors.withLock { $0.count } == 1
        #expect(check41)
        #expect(n.starts == 1)
        #expect(n.ends == 0, "unregistered before its end: the end is skipped")
        box.withLock { $0 = nil }
    }

    @Test func callbackDropsItselfWithNoReleaseAndCall() throws {
        let space = AddressSpace()
        let freed = Atomic<Bool>(false)
        let freedWhileRunning = Atomic<Bool>(false)
        let box = Locked<RecordingNotifier?>(nil)
        let n = RecordingNotifier(onStart: { space in
            guard let me = box.withLock({ $0 }) else { return }
            if (try? space.unregisterNoRelease(me)) != nil {
                space.srcu.call { freed.store(true, ordering: .releasing) }
            }
            sleepMicroseconds(20_000)  // still inside the callback: the grace period waits
            if freed.load(ordering: .acquiring) { freedWhileRunning.store(true, ordering: .relaxed) }
        })
        box.withLock { $0 = n }
        try space.register(n)
        space.invalidate(range(0, 4096), event: .unmap)
        try space.srcu.barrier()
        let wasFreed = freed.load(ordering: .acquiring)
        let early = freedWhileRunning.load(ordering: .relaxed)
        #expect(wasFreed && !early)
        #expect(n.releases == 0 && n.starts == 1 && n.ends == 0)
        #expect(space.notifierCount == 0)
        box.withLock { $0 = nil }
    }

    @Test func agingQueriesEveryNotifier() throws {
        let space = AddressSpace()
        let a = RecordingNotifier(), b = RecordingNotifier()
        try space.register(a)
        try space.register(b)
        #expect(!space.testYoung(range(0, 4096)))
        b.young.store(true, ordering: .relaxed)
        #expect(space.testYoung(range(0, 4096)))
        #expect(space.clearYoung(range(0, 4096)))
        #expect(!space.clearYoung(range(0, 4096)))
        #expect(!space.testYoung(range(0, 4096)))
    }

    @Test func sharedNotifierIsCountedAndFreedAfterTheLastPut() throws {
        let space = AddressSpace()
        let before = CountingShared.made.load(ordering: .relaxed)
        let one = try space.getShared(CountingShared.self)
        let two = try space.getShared(CountingShared.self)
        #expect(one === two)
        let check42 = CountingShared.made.load(ordering: .relaxed) - before == 1
        #expect(check42)
        #expect(space.notifierCount == 1)
        try space.putShared(one)
        #expect(space.notifierCount == 1)
        try space.putShared(two)
        #expect(space.notifierCount == 0)
        try space.srcu.barrier()
        let check43 = one.freed.load(ordering: .acquiring)
        #expect(check43)
        #expect(throws: NotifierError.notRegistered) { try space.putShared(one) }
        let three = try space.getShared(CountingShared.self)
        #expect(three !== one)
        try space.putShared(three)
    }

    @Test func zeroSubscriptionsLeaveTheSequenceEven() throws {
        let space = AddressSpace()
        #expect(space.invalidateSequence == 2)
        space.invalidate(range(0, 1 << 20), event: .unmap)
        #expect(space.invalidateSequence == 2)
        #expect(space.intervalCount == 0)
        #expect(space.countIntervals(overlapping: .everything) == 0)
    }
}
