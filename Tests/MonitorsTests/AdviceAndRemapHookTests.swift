#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import NotifierEngine
import Monitors
import Testing

/// Linux's MADV_GUARD_INSTALL / MADV_GUARD_REMOVE (6.13): not in Debian 12's headers.
let madviseGuardInstall: Int32 = 102
let madviseGuardRemove: Int32 = 103

extension MonitorsTests {
    /// `madvise`, `process_madvise` and `mremap` through libc, taken by the hooks in the calling
    /// thread: advice that may replace pages invalidates before the call returns (guard pages
    /// give no userfaultfd event at all), hints do not, and an `mremap` of a mapping with
    /// watched parts behaves as it would unwatched.
    @Suite("hooks: madvise, process_madvise, mremap")
    struct AdviceAndRemapHookTests {
        let granule: UInt = 2 << 20

        /// A monitor of its own, one watched anonymous buffer and a probe on it.
        struct WatchedBuffer {
            let harness: Harness
            let base: UInt
            let length: UInt
            let probe: RangeProbe

            init(pages: UInt) throws {
                harness = try Harness()
                length = pages * pageSize
                base = try mapAnonymous(length)
                try harness.monitor.watch(try range(base, length))
                probe = try RangeProbe(harness.space, try range(base, length))
            }

            func close() {
                try? harness.monitor.unwatch(try range(base, length))
                unmap(base, length)
                harness.close()
            }
        }

        @Test("page-replacing advice invalidates before madvise returns; hints do not; unknown advice counts as replacing")
        func adviceInvalidates() throws {
            let buffer = try WatchedBuffer(pages: 16)
            defer { buffer.close() }
            let (harness, base, length, probe) = (buffer.harness, buffer.base, buffer.length, buffer.probe)
            let pointer = UnsafeMutableRawPointer(bitPattern: base)
            let before = harness.monitor.statistics.interceptedChanges
            for hint in [MADV_WILLNEED, MADV_SEQUENTIAL, MADV_RANDOM, MADV_NORMAL, MADV_DONTDUMP, MADV_DODUMP] {
                #expect(madvise(pointer, Int(length), hint) == 0, "advice \(hint)")
            }
            // Linux before 6.13 does not know it (EINVAL); either way the hook lets it through.
            let guardRemoved = madvise(pointer, Int(length), madviseGuardRemove)
            #expect(guardRemoved == 0 || errno == EINVAL)
            #expect(probe.seenByNewLookup.isEmpty, "hints replace no page")
            #expect(harness.monitor.statistics.interceptedChanges == before)
            for advice in [MADV_DONTNEED, MADV_FREE] {
                let seen = probe.seenByNewLookup.count
                let changes = harness.monitor.statistics.interceptedChanges
                #expect(madvise(pointer, Int(4 * pageSize), advice) == 0, "advice \(advice)")
                #expect(probe.seenByNewLookup.count > seen, "advice \(advice) reached the subscription")
                #expect(harness.monitor.statistics.interceptedChanges == changes + 1, "advice \(advice) taken by the hook")
            }
            let seen = probe.seenByNewLookup.count
            #expect(madvise(pointer, Int(pageSize), 999) == -1)
            #expect(errno == EINVAL, "the kernel's answer to an unknown advice is kept")
            #expect(probe.seenByNewLookup.count == seen + 1, "an advice the hook does not know is taken as replacing pages")
        }

        @Test("guard pages: MADV_GUARD_INSTALL over watched memory invalidates in the calling thread (a raw one is unseen)")
        func guardInstall() throws {
            let buffer = try WatchedBuffer(pages: 16)
            defer { buffer.close() }
            let (base, probe) = (buffer.base, buffer.probe)
            let pointer = try #require(UnsafeMutableRawPointer(bitPattern: base))
            pointer.storeBytes(of: 0x5A, as: UInt8.self)
            let installed = madvise(pointer, Int(4 * pageSize), madviseGuardInstall)
            #expect(probe.seenByNewLookup == [.remove], "invalidated before madvise returned, whatever the kernel says")
            guard installed == 0 else {
                #expect(errno == EINVAL)
                print("guard pages: not on this kernel (madvise answered EINVAL); the hook invalidated anyway")
                return
            }
            #expect(madvise(pointer, Int(4 * pageSize), madviseGuardRemove) == 0)
            #expect(pointer.load(as: UInt8.self) == 0, "the old page is gone: a new zero page")
            #expect(probe.seenByNewLookup == [.remove], "removing the guard replaces nothing")
            // A raw system call bypasses the hook, and the kernel sends no event: documented as unseen.
            #expect(ctest_raw_madvise(pointer, UInt(pageSize), madviseGuardInstall) == 0)
            #expect(probe.seenByNewLookup == [.remove])
            #expect(ctest_raw_madvise(pointer, UInt(pageSize), madviseGuardRemove) == 0)
        }

        @Test("process_madvise of this process: page-replacing advice invalidates, MADV_COLD does not")
        func processMadvise() throws {
            let buffer = try WatchedBuffer(pages: 16)
            defer { buffer.close() }
            let (harness, base, probe) = (buffer.harness, buffer.base, buffer.probe)
            let pointer = UnsafeMutableRawPointer(bitPattern: base)
            let cold = ctest_process_madvise_self(pointer, UInt(4 * pageSize), 20 /* MADV_COLD */)
            try #require(cold != -1 || errno != ENOSYS, "process_madvise needs Linux 5.10")
            #expect(probe.seenByNewLookup.isEmpty)
            // The kernel may refuse DONTNEED through process_madvise (it takes only some advice);
            // the hook invalidates before asking it.
            let changes = harness.monitor.statistics.interceptedChanges
            _ = ctest_process_madvise_self(pointer, UInt(4 * pageSize), MADV_DONTNEED)
            #expect(probe.seenByNewLookup.first == .remove)
            #expect(harness.monitor.statistics.interceptedChanges == changes + 1, "taken by the hook")
        }

        /// An 8 MiB mapping with one cached-sized buffer watched inside it: the watch splits it
        /// into several VMAs, which mremap alone refuses (EFAULT).
        private func partlyWatched(_ harness: Harness) throws -> (base: UInt, buffer: AddressRange, probe: RangeProbe) {
            let length: UInt = 8 << 20
            let base = try mapAnonymous(length)
            let bytes = try #require(UnsafeMutableRawPointer(bitPattern: base))
            for page in stride(from: 0, to: Int(length), by: Int(pageSize)) { bytes.storeBytes(of: UInt8(truncatingIfNeeded: page / Int(pageSize)), toByteOffset: page, as: UInt8.self) }
            let buffer = try range(base + 3 * (1 << 20) + 5 * pageSize, 16 * pageSize)
            try harness.monitor.watch(buffer)
            return (base, buffer, try RangeProbe(harness.space, buffer))
        }

        private func expectContents(at address: UInt, pages: Int, from first: Int = 0) {
            guard let bytes = UnsafeRawPointer(bitPattern: address) else { return }
            var wrong = 0
            for page in 0..<pages where bytes.load(fromByteOffset: page * Int(pageSize), as: UInt8.self) != UInt8(truncatingIfNeeded: first + page) {
                wrong += 1
            }
            #expect(wrong == 0, "\(wrong) of \(pages) pages lost their contents")
        }

        @Test("mremap of a partly watched mapping: grow (moving), shrink and move succeed as unwatched, invalidating")
        func mremapPartlyWatched() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length: UInt = 8 << 20

            // Grow: with room behind it or not, MAYMOVE must succeed.
            let grow = try partlyWatched(harness)
            let grown = cshims_mremap_maymove(UnsafeMutableRawPointer(bitPattern: grow.base), length, 2 * length)
            #expect(grown != MAP_FAILED, "grow: errno \(errno)")
            let grownAddress = UInt(bitPattern: grown)
            #expect(grow.probe.seenByNewLookup == [.remap])
            expectContents(at: grownAddress, pages: Int(length / pageSize))
            // The moved buffer can be watched again where it is now.
            let moved = try range(grownAddress + (grow.buffer.start - grow.base), 16 * pageSize)
            try harness.monitor.watch(moved)
            try harness.monitor.unwatch(moved)
            try harness.monitor.unwatch(grow.buffer)
            unmap(grownAddress, 2 * length)

            // Shrink in place, cutting the watched buffer off.
            let shrink = try partlyWatched(harness)
            let shrunk = ctest_mremap_in_place(UnsafeMutableRawPointer(bitPattern: shrink.base), length, 2 << 20)
            #expect(UInt(bitPattern: shrunk) == shrink.base, "shrink: errno \(errno)")
            #expect(shrink.probe.seenByNewLookup == [.remap])
            expectContents(at: shrink.base, pages: Int((2 << 20) / pageSize))
            try harness.monitor.unwatch(shrink.buffer)
            unmap(shrink.base, 2 << 20)

            // Move to a fixed target.
            let move = try partlyWatched(harness)
            let target = try mapAnonymous(length)
            let placed = ctest_mremap_to(UnsafeMutableRawPointer(bitPattern: move.base), length, length,
                                          UnsafeMutableRawPointer(bitPattern: target))
            #expect(UInt(bitPattern: placed) == target, "move: errno \(errno)")
            #expect(move.probe.seenByNewLookup == [.remap])
            expectContents(at: target, pages: Int(length / pageSize))
            try harness.monitor.unwatch(move.buffer)
            unmap(target, length)
        }

        @Test("without the hook the kernel refuses that mremap (EFAULT): why it is taken in the calling thread")
        func rawMremapOfSplitMapping() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length: UInt = 8 << 20
            let split = try partlyWatched(harness)
            let raw = ctest_raw_mremap(UnsafeMutableRawPointer(bitPattern: split.base), length, 2 * length, Int32(CTEST_MREMAP_MAYMOVE), nil)
            #expect(raw == MAP_FAILED && errno == EFAULT, "the watch split the mapping; a raw mremap sees several VMAs")
            if raw != MAP_FAILED { unmap(UInt(bitPattern: raw), 2 * length) } else { unmap(split.base, length) }
            try? harness.monitor.unwatch(split.buffer)
        }

        @Test("munmap, mprotect and madvise straddling watched and unwatched parts behave as unwatched")
        func straddlingCalls() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length: UInt = 8 << 20
            let split = try partlyWatched(harness)
            defer { try? harness.monitor.unwatch(split.buffer) }
            let around = split.buffer.start - 4 * pageSize
            let aroundLength = Int(24 * pageSize)
            let pointer = UnsafeMutableRawPointer(bitPattern: around)
            #expect(mprotect(pointer, aroundLength, PROT_READ) == 0)
            #expect(mprotect(pointer, aroundLength, PROT_READ | PROT_WRITE) == 0)
            #expect(madvise(pointer, aroundLength, MADV_DONTNEED) == 0)
            #expect(split.probe.seenByNewLookup.contains(.writeProtect))
            #expect(split.probe.seenByNewLookup.contains(.remove))
            #expect(munmap(UnsafeMutableRawPointer(bitPattern: split.base), Int(length)) == 0)
            #expect(split.probe.seenByNewLookup.last == .unmap)
        }
    }
}
