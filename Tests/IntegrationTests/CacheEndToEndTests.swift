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
    /// The registration cache on the real device turns the stale-registration baseline around:
    /// after the memory at an address changes, registering that address again through the cache
    /// gives a region for the new pages, and an RDMA WRITE through it lands where the
    /// application now has its memory.
    @Suite struct CacheEndToEnd {
        /// How the memory under a cached registration is changed, keeping the address usable.
        enum Change: String, CaseIterable, Sendable {
            case munmapAndMapFixed, mremap, dontNeed, rawMunmapSyscall, guardPages, rawMremapSyscall
        }

        @Test("no stale region after the memory changes", arguments: Change.allCases)
        func noStaleRegion(change: Change) throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let length = 65536
            let buffer = try AnonymousMapping(length: length)
            let address = buffer.address
            let before = try cache.register(buffer.bytes, access: .rdma)
            #expect(Bool(before.isCached), "\(before.uncachedReason ?? "")")
            let beforeKey = before.lkey
            before.release()

            switch change {
            case .munmapAndMapFixed: try buffer.replaceWithFreshMapping()
            case .mremap: try buffer.remap(to: 4 * length)  // may move: the old range is invalid
            case .dontNeed: try buffer.advise(MADV_DONTNEED)
            case .rawMunmapSyscall:
                #expect(cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: address), UInt(length)) == 0)
                try buffer.mapAgain()
            case .rawMremapSyscall:  // a REMAP event: the old range moved away, a new mapping there
                let spare = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                let target = ctest_raw_mremap(UnsafeMutableRawPointer(bitPattern: address), UInt(length), UInt(length),
                                               Int32(CTEST_MREMAP_MAYMOVE | CTEST_MREMAP_FIXED), spare)
                #expect(target != MAP_FAILED, "errno \(errno)")
                if let target, target != MAP_FAILED { _ = munmap(target, length) }
                try buffer.mapAgain()
            case .guardPages:
                // Linux 6.13+: the pages are zapped with no userfaultfd event; the hook sees it.
                let pointer = UnsafeMutableRawPointer(bitPattern: address)
                guard madvise(pointer, length, 102 /* MADV_GUARD_INSTALL */) == 0 else {
                    #expect(errno == EINVAL)
                    print("guard pages: not on this kernel (madvise(MADV_GUARD_INSTALL) answered EINVAL)")
                    return
                }
                #expect(madvise(pointer, length, 103 /* MADV_GUARD_REMOVE */) == 0)
            }
            let target = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: buffer.address),
                                                       count: length)
            let after = try cache.register(target, access: .rdma)
            if buffer.address == address { #expect(after.lkey != beforeKey, "\(change): the old region was served") }
            try Self.expectWriteLands(loopback, into: target, through: after, cache: cache)
            after.release()
        }

        @Test("two caches over two protection domains in one process: both cache, both see the unmap, both writes land")
        func twoCachesTwoDomains() throws {
            let first = try Loopback()
            let second = try Loopback()  // a device context and protection domain of its own
            let firstCache = RegistrationCache(protectionDomain: first.domain)
            let secondCache = RegistrationCache(protectionDomain: second.domain)
            let length = 65536
            let buffer = try AnonymousMapping(length: length)
            let a = try firstCache.register(buffer.bytes, access: .rdma)
            let b = try secondCache.register(buffer.bytes, access: .rdma)
            #expect(Bool(a.isCached) && Bool(b.isCached), "\(a.uncachedReason ?? "") \(b.uncachedReason ?? "")")
            let (aKey, bKey) = (a.rkey, b.rkey)
            a.release()
            b.release()
            try buffer.replaceInPlace()  // mmap(MAP_FIXED): new pages at the same address
            let a2 = try firstCache.register(buffer.bytes, access: .rdma)
            let b2 = try secondCache.register(buffer.bytes, access: .rdma)
            #expect(a2.rkey != aKey && b2.rkey != bKey, "a cache served the region of the old pages")
            try Self.expectWriteLands(first, into: buffer.bytes, through: a2, cache: firstCache)
            try Self.expectWriteLands(second, into: buffer.bytes, through: b2, cache: secondCache)
        }

        @Test("free() and malloc() of a large block at the same address")
        func freeThenMalloc() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let size = 64 << 20  // above glibc's mmap threshold: malloc maps it, free unmaps it
            let first = try #require(malloc(size))
            let firstBuffer = UnsafeMutableRawBufferPointer(start: first, count: 65536)
            let old = try cache.register(firstBuffer, access: .rdma)
            free(first)
            let second = try #require(malloc(size))
            defer { free(second) }
            #expect(second == first, "glibc gave the same address back (the case that matters)")
            let buffer = UnsafeMutableRawBufferPointer(start: second, count: 65536)
            let new = try cache.register(buffer, access: .rdma)
            #expect(Bool(old.isRevoked))
            #expect(new.lkey != old.lkey)
            try Self.expectWriteLands(loopback, into: buffer, through: new, cache: cache)
            old.release()
            new.release()
        }

        @Test("brk shrink and grow again: the heap's top pages are new, the cache registers them anew")
        func brkShrink() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let page = UInt(AnonymousMapping.pageSize)
            let grow = Int(16 * page)
            let old = try #require(cshims_sbrk(grow))
            try #require(UInt(bitPattern: old) != UInt.max, "sbrk(+\(grow)) failed")
            let start = (UInt(bitPattern: old) + page - 1) & ~(page - 1)
            let length = 8 * Int(page)
            let before = try cache.register(address: start, length: length, access: .rdma)
            let beforeKey = before.lkey
            before.release()
            // Shrink only if malloc did not move the break meanwhile (it would lose memory).
            try #require(UInt(bitPattern: cshims_sbrk(0)) == UInt(bitPattern: old) + UInt(grow),
                         "the break moved under the test")
            _ = cshims_sbrk(-grow)
            let regrown = try #require(cshims_sbrk(grow))
            try #require(regrown == old, "the heap grew back elsewhere")
            defer { _ = cshims_sbrk(-grow) }
            let target = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: start), count: length)
            let after = try cache.register(target, access: .rdma)
            #expect(after.lkey != beforeKey, "the region of the old heap pages was served")
            try Self.expectWriteLands(loopback, into: target, through: after, cache: cache)
            after.release()
        }

        @Test("a registration held across munmap still completes RDMA (old pages) and reports isRevoked")
        func heldAcrossUnmap() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let buffer = try AnonymousMapping(length: 65536)
            let held = try cache.register(buffer.bytes, access: .rdma)
            try buffer.replaceWithFreshMapping()
            #expect(Bool(held.isRevoked))

            let payload = try AnonymousMapping(length: 65536)
            payload.fill { _ in 0x5C }
            let source = try loopback.domain.registerMemory(payload.bytes, access: .rdma)
            let completion = try loopback.write(from: source, to: held.address, rkey: held.rkey)
            #expect(completion.status == .success, "the held region still works until released")
            #expect(buffer.count { $0 == 0x5C } == 0, "and it reaches the old pages, not the new ones")
            held.release()
        }

        @Test("after shutdown the device holds no region of the cache's and nothing is pinned")
        func shutdownLeavesNothing() throws {
            let loopback = try Loopback()
            let baseline = try DeviceResources.current(device: Rxe.deviceName)
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            let buffers = try (0..<16).map { _ in try AnonymousMapping(length: 16384) }
            for buffer in buffers { try cache.register(buffer.bytes, access: .rdma).release() }
            let held = try cache.register(buffers[0].bytes, access: .rdma)
            #expect(try DeviceResources.current(device: Rxe.deviceName).memoryRegions == baseline.memoryRegions + 16)
            cache.shutdown()
            #expect(try DeviceResources.current(device: Rxe.deviceName).memoryRegions == baseline.memoryRegions + 1,
                    "the held region stays until released")
            held.release()
            #expect(try DeviceResources.current(device: Rxe.deviceName) == baseline)
            #expect(cache.statistics.pinnedBytes == 0)
            #expect(throws: RegistrationError.self) { _ = try cache.register(buffers[1].bytes, access: .rdma) }
        }

        @Test("bad input through the cache: each a typed error; write access to read-only memory is readOnlyMemory")
        func badInput() throws {
            let loopback = try Loopback()
            let cache = RegistrationCache(protectionDomain: loopback.domain)
            defer { cache.shutdown() }
            let readOnly = try AnonymousMapping(length: 8192)
            try readOnly.protect(PROT_READ)
            let error = try #require(throws: RegistrationError.self) {
                _ = try cache.register(readOnly.bytes, access: [.localWrite, .remoteWrite])
            }
            guard case .readOnlyMemory(let refusedAddress, _, let access) = error else {
                Issue.record("expected readOnlyMemory, got \(error)")
                return
            }
            #expect(refusedAddress == readOnly.address && access == [.localWrite, .remoteWrite], "\(error)")
            let unmapped = try AnonymousMapping(length: 8192)
            let address = unmapped.address
            try unmapped.unmap()
            #expect(throws: RegistrationError.self) { _ = try cache.register(address: address, length: 8192, access: .rdma) }
            #expect(cache.statistics.pinnedBytes == 0)
        }

        /// Writes a pattern with RDMA WRITE through `registration` and checks it is in `buffer`.
        static func expectWriteLands(_ loopback: Loopback, into buffer: UnsafeMutableRawBufferPointer,
                                     through registration: borrowing Registration, cache: RegistrationCache) throws {
            let payload = try AnonymousMapping(length: buffer.count)
            payload.fill { UInt8(truncatingIfNeeded: $0 &* 13 &+ 7) }
            let source = try loopback.domain.registerMemory(payload.bytes, access: .rdma)
            let completion = try loopback.write(from: source, to: registration.address, rkey: registration.rkey)
            #expect(completion.status == .success)
            #expect(Array(buffer) == Array(payload.bytes),
                    "the RDMA WRITE did not land in the application's current memory")
        }
    }
}
