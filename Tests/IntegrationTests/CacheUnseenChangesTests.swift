#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import MemoryMapping
import MemoryRegistration
import Testing
import Verbs

extension RxeIntegration {
    /// Memory changes userfaultfd never reports, end to end on the real device: after each, an
    /// RDMA WRITE through the registration the cache gives for the address lands in the
    /// application's memory (or, for a protection change, can no longer write at all).
    @Suite struct CacheUnseenChanges {
        static let length = 65536

        @Test("a MAP_SHARED memfd is registered uncached; after ftruncate shrink + regrow the write lands")
        func memfdTruncation() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let fd = cshims_memfd("rdmamemory-rxe", UInt(Self.length))
            try #require(fd >= 0)
            defer { close(fd) }
            let pointer = try #require(mmap(nil, Self.length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
            try #require(pointer != MAP_FAILED)
            defer { munmap(pointer, Self.length) }
            let buffer = UnsafeMutableRawBufferPointer(start: pointer, count: Self.length)
            let first = try cache.register(buffer, access: .rdma)
            #expect(!Bool(first.isCached))
            #expect(first.uncachedReason?.contains("memfd") == true, "\(first.uncachedReason ?? "no reason")")
            #expect(first.uncachedReason?.contains("truncation") == true)
            first.release()
            #expect(ftruncate(fd, 0) == 0)
            #expect(ftruncate(fd, off_t(Self.length)) == 0)
            let second = try cache.register(buffer, access: .rdma)
            try CacheEndToEnd.expectWriteLands(loopback, into: buffer, through: second, cache: cache)
            second.release()
        }

        @Test("shmat(SHM_REMAP) over cached anonymous memory: the next registration is of the segment, the write lands")
        func shmatOverCachedMemory() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let mapping = try AnonymousMapping(length: Self.length)
            let before = try cache.register(mapping.bytes, access: .rdma)
            #expect(Bool(before.isCached), "\(before.uncachedReason ?? "")")
            let beforeKey = before.lkey
            before.release()
            let id = cshims_shm_create(UInt(Self.length))
            try #require(id >= 0)
            defer { _ = cshims_shm_remove(id) }
            let attached = cshims_shmat(id, UnsafeMutableRawPointer(bitPattern: mapping.address), CSHIMS_SHM_REMAP)
            try #require(UInt(bitPattern: attached) == mapping.address, "shmat: \(errno)")
            defer { _ = cshims_shmdt(attached) }
            let buffer = UnsafeMutableRawBufferPointer(start: attached, count: Self.length)
            let after = try cache.register(buffer, access: .rdma)
            #expect(after.lkey != beforeKey, "the region of the replaced pages was served")
            #expect(!Bool(after.isCached), "System V memory must not be cached")
            try CacheEndToEnd.expectWriteLands(loopback, into: buffer, through: after, cache: cache)
            after.release()
        }

        /// A raw shmat(SHM_REMAP) (no hook sees it) and a shmdt inside a validated granule, then a
        /// new anonymous mapping there: it must be watched, so its mmap(MAP_FIXED) revokes it.
        @Test("the poisoned-granule sequence: a buffer mapped after it is watched and revoked on mmap(MAP_FIXED)")
        func noPoisonedGranule() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let granule = 2 << 20
            let pool = try AnonymousMapping(length: 3 * granule)
            let start = (pool.address + UInt(granule) - 1) & ~UInt(granule - 1)  // a granule wholly ours
            let anchor = try cache.register(address: start, length: 4096, access: .rdma)
            #expect(Bool(anchor.isCached))
            let target = start + UInt(granule / 2)
            let id = cshims_shm_create(UInt(Self.length))
            try #require(id >= 0)
            defer { _ = cshims_shm_remove(id) }
            let attached = ctest_raw_shmat(id, UnsafeMutableRawPointer(bitPattern: target), CSHIMS_SHM_REMAP)
            try #require(UInt(bitPattern: attached) == target, "raw shmat: \(errno)")
            #expect(cshims_shmdt(attached) == 0)
            func mapFresh() throws {
                let fresh = mmap(UnsafeMutableRawPointer(bitPattern: target), Self.length, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                try #require(fresh == UnsafeMutableRawPointer(bitPattern: target))
            }
            try mapFresh()
            let buffer = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: target), count: Self.length)
            let first = try cache.register(buffer, access: .rdma)
            #expect(Bool(first.isCached), "\(first.uncachedReason ?? "")")
            let firstKey = first.lkey
            first.release()
            try mapFresh()  // mmap(MAP_FIXED) over it: new pages at the same address
            let second = try cache.register(buffer, access: .rdma)
            #expect(second.lkey != firstKey, "the new mapping was not watched: the stale region was served")
            try CacheEndToEnd.expectWriteLands(loopback, into: buffer, through: second, cache: cache)
            second.release()
            anchor.release()
        }

        @Test("mprotect to read-only revokes a cached write region: its old rkey is refused once torn down")
        func mprotectRevokesWriteAccess() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let idle = try AnonymousMapping(length: Self.length)
            let heldMemory = try AnonymousMapping(length: Self.length)
            let released = try cache.register(idle.bytes, access: .rdma)
            let oldRkey = released.rkey
            released.release()
            let held = try cache.register(heldMemory.bytes, access: .rdma)
            try idle.protect(PROT_READ)
            try heldMemory.protect(PROT_READ)
            #expect(Bool(held.isRevoked), "a held region over memory made read-only must say so")
            try cache.waitForPendingTeardowns()

            // The device must refuse the old key now: a peer can no longer write read-only memory.
            // A requester QP and a separate responder QP, so the requester hears the responder's
            // NAK (one QP connected to itself reports its own flush instead, on Linux 7.3).
            let peer = try QueuePair(protectionDomain: loopback.domain, sendCompletionQueue: loopback.queue)
            let requester = try QueuePair(protectionDomain: loopback.domain, sendCompletionQueue: loopback.queue)
            try peer.connect(to: requester.endpoint())
            try requester.connect(to: peer.endpoint())
            let payload = try AnonymousMapping(length: Self.length)
            payload.fill { _ in 0xA5 }
            let source = try loopback.domain.registerMemory(payload.bytes, access: .rdma)
            try requester.postWrite([ScatterGatherElement(region: source)], remoteAddress: UInt64(idle.address),
                                    rkey: oldRkey, id: 9)
            let completion = try loopback.queue.waitForCompletions(1)[0]
            #expect(completion.status == .remoteAccessError, "\(completion.status)")
            #expect(idle.count { $0 == 0xA5 } == 0)

            let error = try #require(throws: RegistrationError.self) { _ = try cache.register(idle.bytes, access: .rdma) }
            guard case .readOnlyMemory = error else {
                Issue.record("expected readOnlyMemory, got \(error)")
                return
            }
            let readable = try cache.register(idle.bytes, access: .remoteRead)
            #expect(Bool(readable.isCached))
            readable.release()
            held.release()
        }
    }
}
