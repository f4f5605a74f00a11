#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import NotifierEngine
import Monitors
import Testing

extension MonitorsTests {
    /// The changes userfaultfd never reports, seen by the process's hooks in the calling thread:
    /// a protection change that takes write access away, `shmat(SHM_REMAP)` over watched memory,
    /// and `shmdt` of a segment that a raw `shmat` put inside a validated granule.
    @Suite("hooks: mprotect, shmat, shmdt")
    struct HookTests {
        let granule: UInt = 2 << 20

        @Test("mprotect taking write away invalidates before it returns; adding it back does not")
        func mprotectInvalidates() throws {
            let harness = try Harness()
            defer { harness.close() }
            #expect(harness.monitor.hooks == .active)
            let base = try mapAnonymous(16 * pageSize)
            defer { unmap(base, 16 * pageSize) }
            let watched = try range(base, 16 * pageSize)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            let pointer = UnsafeMutableRawPointer(bitPattern: base)
            #expect(mprotect(pointer, Int(4 * pageSize), PROT_READ) == 0)
            #expect(probe.seenByNewLookup == [.writeProtect])
            #expect(mprotect(pointer, Int(4 * pageSize), PROT_READ | PROT_WRITE) == 0)
            #expect(probe.seenByNewLookup == [.writeProtect], "adding write access needs no invalidation")
            #expect(mprotect(pointer, Int(pageSize), PROT_NONE) == 0)
            #expect(probe.seenByNewLookup == [.writeProtect, .protectionChange])
            #expect(probe.ranges.first == (try range(base, 4 * pageSize)))
            #expect(harness.monitor.statistics.interceptedChanges >= 2)
            // Raw system calls bypass the hook: documented as unseen.
            #expect(ctest_raw_mprotect(pointer, UInt(pageSize), PROT_READ) == 0)
            #expect(probe.seenByNewLookup.count == 2)
            try harness.monitor.unwatch(watched)
        }

        @Test("mprotect of memory nobody watches: straight to the kernel, errno kept on success and set on failure")
        func unwatchedMprotect() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolated(4 * pageSize)
            defer { unmap(base, 4 * pageSize) }
            let before = harness.monitor.statistics.interceptedChanges
            errno = 4242
            #expect(mprotect(UnsafeMutableRawPointer(bitPattern: base), Int(pageSize), PROT_READ) == 0)
            #expect(errno == 4242)
            #expect(mprotect(UnsafeMutableRawPointer(bitPattern: base + 1), Int(pageSize), PROT_READ) == -1)
            #expect(errno == EINVAL)
            #expect(harness.monitor.statistics.interceptedChanges == before)
        }

        @Test("pkey_mprotect: key -1 is mprotect (and is seen); any other invalid key is the kernel's EINVAL")
        func pkeyMprotect() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(4 * pageSize)
            defer { unmap(base, 4 * pageSize) }
            let watched = try range(base, 4 * pageSize)
            try harness.monitor.watch(watched)
            defer { try? harness.monitor.unwatch(watched) }
            let probe = try RangeProbe(harness.space, watched)
            let pointer = UnsafeMutableRawPointer(bitPattern: base)
            #expect(ctest_pkey_mprotect(pointer, UInt(pageSize), PROT_READ, -2) == -1)
            #expect(errno == EINVAL, "a key below -1 must not become a plain mprotect")
            #expect(ctest_pkey_mprotect(pointer, UInt(pageSize), PROT_READ, -1) == 0)
            #expect(probe.seenByNewLookup.last == .writeProtect)
        }

        @Test("pkey_mprotect with a key that may deny writes is a loss of write access, even keeping PROT_WRITE")
        func pkeyDenyingWrites() throws {
            let key = ctest_pkey_alloc(2 /* PKEY_DISABLE_WRITE */)
            guard key >= 0 else {
                print("protection keys: not on this machine (pkey_alloc: errno \(errno)); the hook's rule is untested here")
                return
            }
            defer { _ = ctest_pkey_free(key) }
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(4 * pageSize)
            defer { unmap(base, 4 * pageSize) }
            let watched = try range(base, 4 * pageSize)
            try harness.monitor.watch(watched)
            defer { try? harness.monitor.unwatch(watched) }
            let probe = try RangeProbe(harness.space, watched)
            let pointer = UnsafeMutableRawPointer(bitPattern: base)
            #expect(ctest_pkey_mprotect(pointer, UInt(pageSize), PROT_READ | PROT_WRITE, key) == 0)
            #expect(probe.seenByNewLookup == [.writeProtect], "the key denies writes: write access is lost")
            #expect(ctest_pkey_mprotect(pointer, UInt(pageSize), PROT_READ | PROT_WRITE, 0) == 0)
            #expect(probe.seenByNewLookup == [.writeProtect], "the default key takes nothing away")
        }

        @Test("a failing mprotect of watched memory reports the kernel's errno")
        func failingMprotect() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(4 * pageSize)
            defer { unmap(base, 4 * pageSize) }
            try harness.monitor.watch(try range(base, 4 * pageSize))
            #expect(mprotect(UnsafeMutableRawPointer(bitPattern: base), Int(pageSize), PROT_READ | 0x4000_0000) == -1)
            #expect(errno == EINVAL)
            try harness.monitor.unwatch(try range(base, 4 * pageSize))
        }

        @Test("shmat(SHM_REMAP) over watched memory invalidates it as an unmap; the segment is then unwatchable")
        func shmatOverWatchedMemory() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length: UInt = 65536
            let base = try mapAnonymous(length)
            defer { unmap(base, length) }
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            let id = cshims_shm_create(length)
            try #require(id >= 0)
            defer { _ = cshims_shm_remove(id) }
            let attached = cshims_shmat(id, UnsafeMutableRawPointer(bitPattern: base), CSHIMS_SHM_REMAP)
            try #require(UInt(bitPattern: attached) == base, "shmat: \(errno)")
            #expect(probe.seenByNewLookup == [.unmap])
            #expect(throws: MonitorError.self) { try harness.monitor.watch(watched) }
            #expect(cshims_shmdt(attached) == 0)
        }

        /// The poisoned-granule sequence: a raw shmat(SHM_REMAP) replaces part of a validated
        /// granule with no event; its shmdt through the C library leaves a hole; a new anonymous
        /// mapping there must be watched for real, so that its later unmap is seen.
        @Test("shmdt of a segment a raw shmat put into a validated granule: later buffers there are watched")
        func noPoisonedGranule() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapIsolated(2 * granule)  // 1 GiB-aligned: the first granule is whole
            defer { unmap(base, 2 * granule) }
            try harness.monitor.watch(try range(base, pageSize))
            #expect(harness.monitor.validatedGranuleCount == 1)
            let length: UInt = 65536
            let target = base + granule / 2
            let id = cshims_shm_create(length)
            try #require(id >= 0)
            defer { _ = cshims_shm_remove(id) }
            let attached = ctest_raw_shmat(id, UnsafeMutableRawPointer(bitPattern: target), CSHIMS_SHM_REMAP)
            try #require(UInt(bitPattern: attached) == target, "raw shmat: \(errno)")
            #expect(cshims_shmdt(attached) == 0)
            #expect(harness.monitor.validatedGranuleCount == 0, "shmdt left the granule validated")
            _ = try mapAgain(length, at: target)
            let fresh = try range(target, length)
            let before = harness.monitor.statistics.watchesWithoutIoctl
            try harness.monitor.watch(fresh)
            #expect(harness.monitor.statistics.watchesWithoutIoctl == before, "the new mapping was trusted unwatched")
            let probe = try RangeProbe(harness.space, fresh)
            _ = try? probe.subscription.readBegin()
            _ = try mapAnonymous(length, at: target)  // mmap(MAP_FIXED) over it: an UNMAP event
            #expect(probe.seenByNewLookup == [.unmap])
        }

        @Test("an unmap from inside an invalidation callback run by a hook goes straight to the kernel")
        func unmapInsideHookCallback() throws {
            let harness = try Harness()
            defer { harness.close() }
            let base = try mapAnonymous(16 * pageSize)
            let other = try mapAnonymous(16 * pageSize)
            defer { unmap(base, 16 * pageSize) }
            try harness.monitor.watch(try range(base, 16 * pageSize))
            try harness.monitor.watch(try range(other, 16 * pageSize))
            let otherProbe = try RangeProbe(harness.space, try range(other, 16 * pageSize))
            let sub = try harness.space.insertInterval(try range(base, 16 * pageSize)) { s, _, seq in
                s.setSequence(seq)
                unmap(other, 16 * pageSize)  // nested: the hook passes it to the kernel, an event
                return true
            }
            #expect(mprotect(UnsafeMutableRawPointer(bitPattern: base), Int(pageSize), PROT_READ) == 0)
            #expect(otherProbe.seenByNewLookup == [.unmap])
            try sub.remove()
        }
    }
}
