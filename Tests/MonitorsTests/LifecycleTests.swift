#if canImport(Glibc)
import Glibc
#endif
import CTestShims
import NotifierEngine
import MemoryMapping
import Monitors
import Synchronization
import SharedTestSupport
import Testing

/// Threads of this process (entries of /proc/self/task).
func threadCount() -> Int {
    guard let directory = opendir("/proc/self/task") else { return -1 }
    defer { closedir(directory) }
    var count = 0
    while let entry = readdir(directory) {
        if entry.pointee.d_name.0 != 46 { count += 1 }  // skip "." and ".."
    }
    return count
}

/// A source other than userfaultfd (a stand-in for a GPU allocator).
final class TestSource: InvalidationSource {
    let name = "test-pool"
    let sink = TestLock<InvalidationSink?>(nil)
    let stopped = Atomic<Bool>(false)
    func start(feeding sink: InvalidationSink) throws { self.sink.withLock { $0 = sink } }
    func stop() {
        sink.withLock { $0 = nil }
        stopped.store(true, ordering: .relaxed)
    }
    /// The pool reuses `range`.
    func recycle(_ range: AddressRange) { sink.withLock { $0 }?.invalidate(range, cause: .reused) }
}

extension MonitorsTests {
    @Suite("Privileges, explicit mode, sources, fork, shutdown")
        struct LifecycleTests {
        @Test("features negotiated and checked; as root the plain system call")
        func negotiation() throws {
            let harness = try Harness()
            defer { harness.close() }
            #expect(harness.monitor.features & UserfaultfdFeature.required == UserfaultfdFeature.required)
            #expect(harness.monitor.offeredFeatures & UserfaultfdFeature.required == UserfaultfdFeature.required)
            if geteuid() == 0 { #expect(harness.monitor.privilege == .full) }
        }

        @Test("each way of obtaining userfaultfd works where permitted", arguments: [
            UserfaultfdPrivilege.full, .userModeOnly, .deviceNode,
        ])
        func privilege(_ privilege: UserfaultfdPrivilege) throws {
            if privilege == .deviceNode && access("/dev/userfaultfd", R_OK | W_OK) != 0 {
                #expect(throws: MonitorError.self) {
                    _ = try UserfaultfdMonitor(space: AddressSpace(), configuration: .init(strategy: .only(.deviceNode)))
                }
                return
            }
            let harness = try Harness(configuration: .init(strategy: .only(privilege)))
            defer { harness.close() }
            #expect(harness.monitor.privilege == privilege)
            let mapping = try AnonymousMapping(length: 16 << 10)
            let watched = try range(of: mapping)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            try mapping.unmap()
            #expect(probe.seenByNewLookup == [.unmap])
        }

        @Test("an unprivileged user gets userfaultfd through UFFD_USER_MODE_ONLY (the order .automatic tries first)")
        func unprivileged() throws {
            let result = ctest_probe_unprivileged_userfaultfd(UserfaultfdFeature.required | UserfaultfdFeature.optional)
            try #require(result >= 0 && result != 64, "could not drop to uid 65534 (result \(result))")
            #expect(result & 2 != 0, "UFFD_USER_MODE_ONLY refused to an unprivileged user")
            #expect(result & 4 != 0, "UFFDIO_API with the monitor's features refused")
            #expect(result & 8 != 0, "write-protect registration refused")
            var sysctl = [UInt8](repeating: 0, count: 8)
            let fd = open("/proc/sys/vm/unprivileged_userfaultfd", O_RDONLY)
            if fd >= 0 {
                _ = read(fd, &sysctl, 8)
                close(fd)
                if sysctl[0] == UInt8(ascii: "0") {
                    #expect(result & 1 == 0, "plain userfaultfd allowed although vm.unprivileged_userfaultfd = 0")
                }
            }
        }

        @Test("where userfaultfd is refused, the error names vm.unprivileged_userfaultfd and /dev/userfaultfd")
        func refusalMessage() {
            let error = MonitorError.userfaultfdUnavailable(attempts: [
                UserfaultfdAttempt(method: "userfaultfd(2) with UFFD_USER_MODE_ONLY", errno: .notPermitted),
                UserfaultfdAttempt(method: "open(/dev/userfaultfd)", errno: .permissionDenied),
            ])
            #expect(error.description.contains("vm.unprivileged_userfaultfd"))
            #expect(error.description.contains("/dev/userfaultfd"))
            #expect(error.description.contains("UFFD_USER_MODE_ONLY"))
        }

        @Test("explicit-only mode keeps the library usable: watch says uncached, invalidate works")
        func explicitOnly() throws {
            let space = AddressSpace()
            let monitor = MemoryMonitor(space: space, useUserfaultfd: false)
            defer { monitor.shutdown() }
            #expect(monitor.isExplicitOnly)
            let watched = try range(0x7000_0000, 4 * pageSize)
            guard case let .uncached(reason) = monitor.watch(watched) else {
                Issue.record("explicit-only mode watched a range")
                return
            }
            #expect(reason == .explicitOnlyRequested)
            let probe = try RangeProbe(space, watched)
            monitor.invalidate(watched, cause: .unmapped)
            #expect(probe.seenByNewLookup == [.unmap])
            monitor.invalidate(watched, cause: .reused)
            #expect(probe.seenByNewLookup == [.unmap, .explicit])
        }

        @Test("MemoryMonitor with userfaultfd: watched, unwatchable reported as uncached")
        func facade() throws {
            let space = AddressSpace()
            let monitor = MemoryMonitor(space: space)
            defer { monitor.shutdown() }
            guard case .userfaultfd = monitor.mode else {
                Issue.record("no userfaultfd: \(monitor.mode)")
                return
            }
            let mapping = try AnonymousMapping(length: 8 << 10)
            let watched = try range(of: mapping)
            #expect(monitor.watch(watched) == .watched)
            try monitor.unwatch(watched)
            try mapping.unmap()
            guard case .uncached(.unwatchable(_, .notMapped)) = monitor.watch(watched) else {
                Issue.record("an unmapped range was not reported as such")
                return
            }
        }

        @Test("another source plugs in through InvalidationSource and stops with the monitor")
        func source() throws {
            let space = AddressSpace()
            let monitor = MemoryMonitor(space: space)
            let source = TestSource()
            try monitor.attach(source)
            let pool = try range(0x6000_0000, 64 * pageSize)
            let probe = try RangeProbe(space, pool)
            source.recycle(pool)
            #expect(probe.seenByNewLookup == [.explicit])
            monitor.shutdown()
            let stopped = source.stopped.load(ordering: .relaxed)
            #expect(stopped)
            monitor.shutdown()  // harmless
        }

        @Test("fork: the child inherits no monitoring; its unmap does not hang, the parent keeps working")
        func fork() throws {
            let harness = try Harness()
            defer { harness.close() }
            let length = 16 * pageSize
            let base = try mapAnonymous(length)
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            let probe = try RangeProbe(harness.space, watched)
            let eventsBefore = harness.monitor.statistics.events
            let child = ctest_fork_touch_unmap_exit(UnsafeMutableRawPointer(bitPattern: base), length, pageSize)
            try #require(child > 0)
            #expect(ctest_wait_child(child, 10_000) == 0, "the child hung or failed (its munmap waited for a monitor it does not have)")
            #expect(probe.seenByNewLookup.isEmpty)
            #expect(harness.monitor.statistics.events == eventsBefore)
            unmap(base, length)
            #expect(probe.seenByNewLookup == [.unmap])
        }

        @Test("shutdown: threads stop, ranges are unwatched, a second shutdown is harmless")
        func shutdown() throws {
            let threadsBefore = threadCount()
            let harness = try Harness()
            let length = 8 * pageSize
            let base = try mapAnonymous(length)
            let watched = try range(base, length)
            try harness.monitor.watch(watched)
            #expect(threadCount() >= threadsBefore + 2)
            let probe = try RangeProbe(harness.space, watched)
            harness.monitor.shutdown()
            #expect(!harness.monitor.isRunning)
            #expect(harness.monitor.watchedGranuleCount == 0)
            // Whatever might have been missed between the last read and the close is invalidated.
            #expect(probe.seenByNewLookup == [.explicit])
            #expect(throws: MonitorError.shutDown) { try harness.monitor.watch(watched) }
            harness.monitor.shutdown()
            // Nothing is registered any more: an unmap neither waits nor reports.
            #expect(finishes(within: 10) { unmap(base, length) })
            #expect(probe.seenByNewLookup == [.explicit])
            var threadsAfter = threadCount()
            for _ in 0..<100 where threadsAfter > threadsBefore {
                usleep(10_000)
                threadsAfter = threadCount()
            }
            #expect(threadsAfter <= threadsBefore)
        }

        @Test("a monitor dropped without shutdown shuts down in deinit")
        func deinitShutsDown() throws {
            let length = 8 * pageSize
            let base = try mapAnonymous(length)
            do {
                let monitor = try UserfaultfdMonitor(space: AddressSpace())
                try monitor.watch(range(base, length))
            }
            #expect(finishes(within: 10) { unmap(base, length) })
        }
    }
}
