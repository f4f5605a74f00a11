#if canImport(Glibc)
import Glibc
#endif
import CTestShims
import NotifierEngine
import Synchronization
import Monitors
import Testing

extension MonitorsTests {
    /// The hooks allocate nothing between their entry and the real call. libfabric's
    /// `fi_mr_cache_evict` test found why it matters: with `mallopt(M_MMAP_THRESHOLD, 1)` every
    /// malloc is a fresh mapping, and after `munmap(buffer)` the kernel hands the hole to the next
    /// one. A hook that allocated before the program's `mmap(buffer, MAP_FIXED)` then had its
    /// object zeroed under it, and crashed releasing it (6 runs in 12).
    ///
    /// Run by `scripts/run-tests` with glibc's malloc, and again with jemalloc and mimalloc
    /// preloaded (`HOOK_ALLOCATION_ITERATIONS` sets the count).
    @Suite("hooks allocate nothing before the real call")
    struct HookAllocationTests {
        var iterations: Int {
            if let text = getenv("HOOK_ALLOCATION_ITERATIONS"), let value = Int(String(cString: text)) { return value }
            return 3000
        }

        /// glibc's per-thread cache hides an allocation from its counts (a chunk taken from it was
        /// counted in use already): the count means something only with the cache off, as
        /// `scripts/run-tests` runs it (GLIBC_TUNABLES=glibc.malloc.tcache_count=0).
        static var threadCacheOff: Bool {
            guard let tunables = getenv("GLIBC_TUNABLES") else { return false }
            return String(cString: tunables).contains("glibc.malloc.tcache_count=0")
        }

        @Test("nothing the hook allocated is alive when the callbacks run: glibc's bytes in use, under M_MMAP_THRESHOLD 1",
              .enabled(if: HookAllocationTests.threadCacheOff, "needs GLIBC_TUNABLES=glibc.malloc.tcache_count=0 (scripts/run-tests sets it)"))
        func noBlockAliveInCallbacks() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length: UInt = 64 << 10
            try #require(ctest_set_mmap_threshold(1) == 1, "glibc's malloc (not a preloaded one)")
            defer { _ = ctest_set_mmap_threshold(128 << 10) }
            let base = try mapAnonymous(length)
            let buffer = try range(base, length)
            try harness.monitor.watch(buffer)
            defer { try? harness.monitor.unwatch(buffer) }
            // The callback allocates nothing itself: it reads the count into an atomic. Only the
            // first call counts: the hook's, in this thread, before the real call (a userfaultfd
            // event of the same change, DONTNEED's, reaches it again later on the worker).
            let during = Atomic<UInt64>(.max)
            let subscription = try harness.space.insertInterval(buffer) { sub, _, sequence in
                sub.setSequence(sequence)
                _ = during.compareExchange(expected: .max, desired: UInt64(ctest_heap_in_use()), ordering: .relaxed)
                return true
            }
            defer { try? subscription.remove() }
            let pointer = UnsafeMutableRawPointer(bitPattern: base)
            // The count is the whole process's: another thread (the test runner's output) may
            // allocate meanwhile. A hook that allocates does so on every call, so each call gets
            // a few tries and must show no new block in at least one.
            for (call, change) in [("mprotect", { _ = mprotect(pointer, Int(length), PROT_READ) }),
                                   ("madvise", { _ = madvise(pointer, Int(length), MADV_DONTNEED) }),
                                   ("mremap", { _ = ctest_mremap_in_place(pointer, UInt(length), UInt(length)) }),
                                   ("munmap", {
                                       _ = munmap(pointer, Int(length))
                                       _ = mmap(pointer, Int(length), PROT_READ | PROT_WRITE,
                                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                                       _ = try? harness.monitor.watch(buffer)
                                   })] as [(String, () -> Void)] {
                var extra: [Int64] = []
                for _ in 0..<5 {
                    during.store(.max, ordering: .relaxed)
                    let before = UInt64(ctest_heap_in_use())
                    change()
                    let seen = during.load(ordering: .relaxed)
                    _ = try? subscription.readBegin()  // DONTNEED's event, if any, is handled before the next change
                    #expect(seen != .max, "\(call): the hook ran the callback")
                    extra.append(Int64(bitPattern: seen &- before))
                    if seen == before { break }
                    _ = mprotect(pointer, Int(length), PROT_READ | PROT_WRITE)
                }
                #expect(extra.last == 0, "\(call): bytes allocated before the callback, per try: \(extra)")
            }
        }

        @Test("munmap, then mmap(MAP_FIXED) into the hole, thousands of times under M_MMAP_THRESHOLD 1, watched and unwatched")
        func remapIntoTheHole() throws {
            let harness = try Harness()
            defer { harness.close() }
            #expect(harness.monitor.hooks == .active)
            let length: UInt = 64 << 10
            // 0 under a preloaded jemalloc or mimalloc, which map as they please.
            let glibc = ctest_set_mmap_threshold(1) == 1
            defer { if glibc { _ = ctest_set_mmap_threshold(128 << 10) } }
            for watched in [true, false] {
                // Placed by the kernel, among the other mappings: the hole is where the next
                // malloc'd mapping goes.
                let base = try mapAnonymous(length)
                let buffer = try range(base, length)
                if watched { try harness.monitor.watch(buffer) }
                // A callback that allocates nothing: it runs inside the hooked mmap(MAP_FIXED),
                // before the real call, and a block it kept could be placed in the very hole
                // that call fills (a RangeProbe's growing log was, once in CI).
                let invalidations = Atomic<Int>(0)
                let probe = try harness.space.insertInterval(buffer) { sub, _, sequence in
                    sub.setSequence(sequence)
                    invalidations.add(1, ordering: .relaxed)
                    return true
                }
                defer { try? probe.remove() }
                var lost = 0
                for iteration in 0..<iterations {
                    let pointer = UnsafeMutableRawPointer(bitPattern: base)
                    #expect(munmap(pointer, Int(length)) == 0)
                    let again = mmap(pointer, Int(length), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                    guard again == pointer, let bytes = again else {
                        Issue.record("mmap(MAP_FIXED) failed at iteration \(iteration): errno \(errno)")
                        break
                    }
                    if bytes.load(as: UInt8.self) != 0 { lost += 1 }
                    bytes.storeBytes(of: UInt8(truncatingIfNeeded: iteration | 1), as: UInt8.self)
                    if watched {
                        // As a cache miss would: the new mapping watched again (a new granule
                        // record when the unmap dropped the old one).
                        try harness.monitor.watch(buffer)
                        try harness.monitor.unwatch(buffer)
                    }
                }
                #expect(lost == 0, "a fresh MAP_FIXED mapping held old bytes")
                if watched {
                    #expect(invalidations.load(ordering: .relaxed) >= iterations, "the hooked path ran")
                    try harness.monitor.unwatch(buffer)
                }
                unmap(base, length)
                // The heap is still sound: a few allocations and frees of every size class.
                for size in [16, 200, 4096, 1 << 20] {
                    let block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
                    block.initializeMemory(as: UInt8.self, repeating: 1, count: size)
                    block.deallocate()
                }
            }
        }
    }
}
