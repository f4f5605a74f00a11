import Synchronization
import SharedTestSupport
import Testing
@testable import NotifierEngine

/// Inside an invalidation callback nothing may wait for an invalidation to end (it may be the
/// callback's own): each wait throws `.wouldDeadlock` instead, and what can be done without
/// waiting (a removal applied when the invalidation ends) leaves nothing behind.
@Suite("Waits inside callbacks throw instead of hanging")
struct CallbackWaitTests {
    /// What one callback saw when it tried each call.
    final class Seen: Sendable {
        let lines = Locked<[String]>([])
        func record(_ line: String) { lines.withLock { $0.append(line) } }
    }

    @Test("readBegin of a covered subscription, and of one inserted during the invalidation, throw .wouldDeadlock")
    func readBeginInsideACallback() throws {
        let space = AddressSpace()
        let seen = Seen()
        let outside = try space.insertInterval(range(0x90000, 0x1000)) { sub, _, sequence in
            sub.setSequence(sequence)
            return true
        }
        let trigger = try space.insertInterval(range(0x10000, 0x1000)) { sub, _, sequence in
            sub.setSequence(sequence)
            // Its own subscription: covered, and its sequence already set (deterministic; another
            // covered subscription not yet called would still hold its old sequence and return).
            do { _ = try sub.readBegin(); seen.record("covered: returned") } catch { seen.record("covered: \(error)") }
            do { _ = try outside.readBegin(); seen.record("outside: returned") } catch { seen.record("outside: \(error)") }
            // A subscription made now starts with a sequence that waits for this invalidation.
            if let late = try? space.insertInterval(range(0x50000, 0x1000), invalidate: { _, _, _ in true }) {
                do { _ = try late.readBegin(); seen.record("late: returned") } catch { seen.record("late: \(error)") }
                try? late.removeWithoutWaiting()
            }
            return true
        }
        let finished = finishes(within: 20) { space.invalidate(range(0x10000, 0x1000), event: .explicit) }
        #expect(finished, "a wait inside the callback hung")
        let lines = seen.lines.withLock { $0 }
        #expect(lines.count == 3, "\(lines)")
        #expect(lines.first?.hasPrefix("covered: wouldDeadlock") == true, "\(lines)")
        #expect(lines.dropFirst().first == "outside: returned", "not covered, no window: no wait, no error")
        #expect(lines.last?.hasPrefix("late: wouldDeadlock") == true, "\(lines)")
        #expect(!AddressSpace.isInsideCallback, "the depth went back to zero")
        #expect(space.intervalCount == 2, "the late subscription was removed when the invalidation ended")
        for sub in [outside, trigger] { try sub.remove() }
    }

    @Test("a remove that would wait throws inside a callback; removeWithoutWaiting is applied at the end, once")
    func removeInsideACallback() throws {
        let space = AddressSpace()
        let seen = Seen()
        let victim = try space.insertInterval(range(0x10000, 0x1000)) { sub, _, sequence in
            sub.setSequence(sequence)
            return true
        }
        let remover = try space.insertInterval(range(0x10000, 0x1000)) { sub, _, sequence in
            sub.setSequence(sequence)
            do { try victim.remove(); seen.record("remove: returned") } catch { seen.record("remove: \(error)") }
            do { try victim.removeWithoutWaiting(); seen.record("without waiting: deferred") } catch { seen.record("\(error)") }
            do { try victim.removeWithoutWaiting(); seen.record("again: accepted") } catch { seen.record("again: \(error)") }
            return true
        }
        #expect(space.intervalCount == 2)
        space.invalidate(range(0x10000, 0x1000), event: .explicit)
        let lines = seen.lines.withLock { $0 }
        #expect(lines.count == 3)
        #expect(lines.first?.hasPrefix("remove: wouldDeadlock") == true, "\(lines)")
        #expect(lines.dropFirst().first == "without waiting: deferred", "\(lines)")
        #expect(lines.last == "again: alreadyRemoved", "\(lines)")
        #expect(space.intervalCount == 1, "the deferred removal was applied when the invalidation ended")
        try remover.remove()
        #expect(throws: NotifierError.alreadyRemoved) { try victim.remove() }
    }
}
