import SharedTestSupport
import Synchronization
import Testing
@testable import NotifierEngine

@Suite("SRCU domain")
struct SRCUDomainTests {
    @Test func nestedReadersOnOneThread() {
        let srcu = SRCUDomain()
        #expect(!srcu.isInsideReadSection)
        let outer = srcu.readLock()
        let inner = srcu.readLock()
        #expect(srcu.isInsideReadSection)
        srcu.readUnlock(inner)
        #expect(srcu.isInsideReadSection)
        srcu.readUnlock(outer)
        #expect(!srcu.isInsideReadSection)
        let value = srcu.withReadLock { srcu.withReadLock { 42 } }
        #expect(value == 42)
        #expect(!srcu.isInsideReadSection)
    }

    @Test func droppedTokenLeavesTheSection() {
        let srcu = SRCUDomain()
        do { _ = srcu.readLock() }
        #expect(!srcu.isInsideReadSection)
        #expect(throws: Never.self) { try srcu.synchronize() }
    }

    @Test func synchronizeWithNoReadersReturns() throws {
        let srcu = SRCUDomain()
        for _ in 0..<100 { try srcu.synchronize() }
    }

    @Test func synchronizeWaitsForEarlierReader() throws {
        let srcu = SRCUDomain()
        let readerInside = Atomic<Bool>(false)
        let readerLeft = Atomic<Bool>(false)
        let syncReturned = Atomic<Bool>(false)
        let reader = spawn {
            let token = srcu.readLock()
            readerInside.store(true, ordering: .releasing)
            sleepMicroseconds(300_000)
            readerLeft.store(true, ordering: .releasing)
            srcu.readUnlock(token)
        }
        while !readerInside.load(ordering: .acquiring) { sleepMicroseconds(100) }
        let writer = spawn {
            try? srcu.synchronize()
            let check18 = readerLeft.load(ordering: .acquiring)
            #expect(check18, "synchronize returned before the reader left")
            syncReturned.store(true, ordering: .releasing)
        }
        sleepMicroseconds(30_000)
        let check19 = !syncReturned.load(ordering: .acquiring)
        #expect(check19)
        reader.join()
        writer.join()
        let check20 = syncReturned.load(ordering: .acquiring)
        #expect(check20)
    }

    @Test func synchronizeInsideReadSectionThrows() {
        let srcu = SRCUDomain()
        srcu.withReadLock {
            #expect(throws: NotifierError.self) { try srcu.synchronize() }
            #expect(throws: NotifierError.self) { try srcu.barrier() }
        }
    }

    @Test func readersOfAnotherDomainDoNotDelaySynchronize() throws {
        let a = SRCUDomain(), b = SRCUDomain()
        let token = a.readLock()
        try b.synchronize()  // would hang if domains shared counters
        a.readUnlock(token)
    }

    @Test func callbacksRunInOrderAfterAGracePeriod() throws {
        let srcu = SRCUDomain()
        let order = Locked<[Int]>([])
        let readerInside = Atomic<Bool>(true)
        let ranEarly = Atomic<Bool>(false)
        let token = srcu.readLock()
        for i in 0..<100 {
            srcu.call {
                if readerInside.load(ordering: .acquiring) { ranEarly.store(true, ordering: .relaxed) }
                order.withLock { $0.append(i) }
            }
        }
        sleepMicroseconds(20_000)
        let check21 = order.withLock { $0.isEmpty }
        #expect(check21, "a callback ran while a reader that predates it was inside")
        readerInside.store(false, ordering: .releasing)
        srcu.readUnlock(token)
        try srcu.barrier()
        let check22 = order.withLock { $0 } == Array(0..<100)
        #expect(check22)
        let check23 = !ranEarly.load(ordering: .relaxed)
        #expect(check23)
    }

    @Test func barrierWaitsForEveryQueuedCallback() throws {
        let srcu = SRCUDomain()
        let ran = Atomic<Int>(0)
        runConcurrently(4) { _ in
            for _ in 0..<250 { srcu.call { ran.wrappingAdd(1, ordering: .relaxed) } }
        }
        try srcu.barrier()
        let check24 = ran.load(ordering: .relaxed) == 1000
        #expect(check24)
        try srcu.barrier()  // nothing queued: returns at once
    }

    @Test func barrierFromACallbackRefuses() throws {
        let srcu = SRCUDomain()
        let result = Locked<NotifierError?>(nil)
        srcu.call {
            do throws(NotifierError) { try srcu.barrier() } catch { result.withLock { $0 = error } }
        }
        try srcu.barrier()
        let check25 = result.withLock { $0 } != nil
        #expect(check25)
    }

    @Test func callbackMayQueueAnotherCallback() throws {
        let srcu = SRCUDomain()
        let second = Atomic<Bool>(false)
        srcu.call { srcu.call { second.store(true, ordering: .releasing) } }
        try srcu.barrier()
        try srcu.barrier()
        let check26 = second.load(ordering: .acquiring)
        #expect(check26)
    }

    @Test func slotsOfExitedThreadsAreReused() {
        let srcu = SRCUDomain()
        for _ in 0..<20 {
            spawn { srcu.withReadLock { () } }.join()
        }
        #expect(srcu.readerSlotCount <= 3)
    }

    @Test func manyReadersAndWritersConcurrently() throws {
        let srcu = SRCUDomain()
        let stop = Atomic<Bool>(false)
        let reads = Atomic<Int>(0)
        let readers = (0..<4).map { _ in
            spawn {
                while !stop.load(ordering: .relaxed) {
                    srcu.withReadLock { srcu.withReadLock { _ = reads.wrappingAdd(1, ordering: .relaxed) } }
                }
            }
        }
        runConcurrently(2) { _ in
            for _ in 0..<50 { try? srcu.synchronize() }
        }
        stop.store(true, ordering: .relaxed)
        for r in readers { r.join() }
        let check27 = reads.load(ordering: .relaxed) > 0
        #expect(check27)
    }
}

@Suite("SRCU counter slots")
struct SRCUSlotTests {
    @Test func moreDomainsThanThreadLocalCacheWays() throws {
        let domains = (0..<20).map { _ in SRCUDomain() }
        // Interleave so that cache entries are evicted and found again via the slow path.
        for d in domains { d.readUnlock(d.readLock()) }
        for round in 0..<3 {
            for (i, d) in domains.enumerated() where (i + round) % 2 == 0 {
                let outer = d.readLock()
                #expect(d.isInsideReadSection)
                for other in domains where other !== d { #expect(!other.isInsideReadSection) }
                d.readUnlock(outer)
            }
        }
        for d in domains {
            #expect(d.readerSlotCount == 1)
            try d.synchronize()
        }
    }

    @Test func domainDestroyedWhileItsReaderThreadLives() {
        let stage = Atomic<Int>(0)
        let box = Locked<SRCUDomain?>(SRCUDomain())
        let thread = spawn {
            box.withLock { $0 }?.withReadLock { () }
            stage.store(1, ordering: .releasing)
            while stage.load(ordering: .acquiring) != 2 { sleepMicroseconds(100) }
            // The old domain is gone; a new one takes this thread through the slow path,
            // which frees the orphaned slot.
            let fresh = SRCUDomain()
            fresh.withReadLock { () }
        }
        while stage.load(ordering: .acquiring) != 1 { sleepMicroseconds(100) }
        box.withLock { $0 = nil }
        stage.store(2, ordering: .releasing)
        thread.join()
    }
}
