#if canImport(Glibc)
import Glibc
#endif
import CMemoryHooks
import CShims
import CTestShims
import NotifierEngine
@testable import Monitors
import SharedTestSupport
import Testing

extension MonitorsTests {
    /// A monitor that fails fails loudly: no thread waits forever for an event nobody reads,
    /// everything cached is revoked, later watches are refused with the reason, and nothing a
    /// failed start took is left behind.
    @Suite("a failing monitor")
    struct FailureTests {
        @Test("the reader fails with an unmap waiting for it: the unmap returns, everything is invalidated")
        func readerFailure() throws {
            let harness = try Harness(configuration: .init(interceptsMunmap: false))
            defer { harness.close() }
            let length: UInt = 16 * pageSize
            let base = try mapIsolated(length)
            let other = try mapIsolated(length)
            defer { unmap(other, length) }
            try harness.monitor.watch(try range(base, length))
            try harness.monitor.watch(try range(other, length))
            let probe = try RangeProbe(harness.space, try range(other, length))
            harness.monitor.injectFailure(.readerBeforeRead)
            // A raw munmap of watched memory sleeps until its event is read: the reader fails
            // instead of reading, and must not leave it asleep.
            let returned = finishes(within: 20) { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), length) }
            #expect(returned, "munmap hung on a failed reader")
            #expect(probe.seenByNewLookup.contains(.explicit), "the cached translations of other memory were not revoked")
            guard case .monitorFailed(thread: "reader", _, _)? = harness.monitor.failure else {
                Issue.record("failure: \(String(describing: harness.monitor.failure))")
                return
            }
            #expect(!harness.monitor.isRunning)
            let again = try range(other, length)
            do {
                try harness.monitor.watch(again)
                Issue.record("a failed monitor accepted a watch")
            } catch {
                guard case .monitorFailed = error else {
                    Issue.record("\(error)")
                    return
                }
            }
            // Unwatching what was watched before the failure is harmless.
            try harness.monitor.unwatch(try range(other, length))
        }

        @Test("the reader fails while a fork() child holds the descriptor: the context still ends, a later unmap of formerly watched memory returns, callbacks run on the worker")
        func readerFailureWithForkedChild() throws {
            let harness = try Harness(configuration: .init(interceptsMunmap: false))
            defer { harness.close() }
            let length: UInt = 16 * pageSize
            let base = try mapIsolated(length)
            let other = try mapIsolated(length)
            try harness.monitor.watch(try range(base, length))
            try harness.monitor.watch(try range(other, length))
            let readerID = harness.monitor.threads.readerID.load(ordering: .acquiring)
            let callbackThreads = TestLock<[UInt]>([])
            let probe = try harness.space.insertInterval(try range(other, length)) { sub, _, sequence in
                sub.setSequence(sequence)
                callbackThreads.withLock { $0.append(UInt(pthread_self())) }
                return true
            }
            defer { try? probe.remove() }
            var pipeEnds: [Int32] = [0, 0]
            try #require(pipe(&pipeEnds) == 0)
            let child = ctest_fork_holding_until_closed(pipeEnds[0], pipeEnds[1])
            try #require(child > 0)
            close(pipeEnds[0])
            defer {
                close(pipeEnds[1])
                #expect(ctest_wait_child(child, 20_000) == 0)
            }
            harness.monitor.injectFailure(.readerBeforeRead)
            #expect(finishes(within: 20) { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), length) },
                    "munmap hung on a failed reader")
            // Formerly watched memory: registered still if the child had kept the context alive.
            #expect(finishes(within: 20) { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: other), length) },
                    "an unmap of formerly watched memory hung: the context outlived the failure")
            #expect(harness.monitor.failure != nil)
            _ = try? probe.readBegin()  // a lookup after the unmaps returned: waits for the failure's window
            let threads = callbackThreads.withLock { $0 }
            #expect(!threads.isEmpty, "everything was invalidated")
            #expect(!threads.contains(readerID), "a callback ran on the reader thread")
            // The number now names /dev/null, still closed on exec.
            #expect(fcntl(harness.monitor.descriptor.fd, F_GETFD) & FD_CLOEXEC != 0)
        }

        @Test("the worker fails: windows close, lookups do not hang, everything is invalidated")
        func workerFailure() throws {
            let harness = try Harness(configuration: .init(interceptsMunmap: false))
            defer { harness.close() }
            let length: UInt = 16 * pageSize
            let base = try mapIsolated(length)
            try harness.monitor.watch(try range(base, length))
            let probe = try RangeProbe(harness.space, try range(base, length))
            harness.monitor.injectFailure(.worker)
            let returned = finishes(within: 20) {
                _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: base), length)
                _ = try? probe.subscription.readBegin()  // waits for the window: must not hang
            }
            #expect(returned)
            // Set already: the worker fails on its first work item, before it ends any window, and
            // `terminate` records the failure inside a window of its own; so whichever came first,
            // the window `readBegin` waited for closed after the failure was recorded.
            #expect(harness.monitor.failure != nil)
            #expect(probe.seenByNewLookup.contains(.explicit))
            guard case .monitorFailed(thread: "worker", _, _)? = harness.monitor.failure else {
                Issue.record("failure: \(String(describing: harness.monitor.failure))")
                return
            }
        }

        @Test("MemoryMonitor reports the failure in its mode")
        func modeSaysFailed() throws {
            let monitor = MemoryMonitor(space: AddressSpace())
            defer { monitor.shutdown() }
            guard let userfaultfd = monitor.userfaultfd else {
                Issue.record("no userfaultfd: \(monitor.mode)")
                return
            }
            let base = try mapIsolated(4 * pageSize)
            defer { unmap(base, 4 * pageSize) }
            #expect(monitor.watch(try range(base, 4 * pageSize)) == .watched)
            userfaultfd.injectFailure(.worker)
            #expect(finishes(within: 20) { while userfaultfd.failure == nil { usleep(1000) } })
            guard case .failed = monitor.mode else {
                Issue.record("mode: \(monitor.mode)")
                return
            }
            guard case .uncached(.monitorFailed) = monitor.watch(try range(base, pageSize)) else {
                Issue.record("a failed monitor watched")
                return
            }
            #expect("\(monitor.mode)".contains("revoked"))
        }

        @Test("a start that fails half way leaves no thread, descriptor or hook slot behind",
              arguments: [UserfaultfdMonitor.InitStep.workerThread, .readerThread])
        func failedStartLeaksNothing(step: UserfaultfdMonitor.InitStep) throws {
            let threads = monitorThreadCount(), descriptors = userfaultfdCount(), slots = cmemhooks_active_slots()
            for _ in 0..<20 {
                #expect(throws: MonitorError.self) {
                    _ = try UserfaultfdMonitor(space: AddressSpace(), configuration: .init(), failingAt: step)
                }
            }
            // A joined thread leaves /proc a moment after pthread_join returns (the kernel reaps it
            // after clearing its tid); other tests' monitors may only make the count fall.
            #expect(finishes(within: 10) { while monitorThreadCount() > threads { usleep(1000) } },
                    "monitor threads left running")
            #expect(userfaultfdCount() <= descriptors, "userfaultfd descriptors left open")
            #expect(cmemhooks_active_slots() & ~slots == 0, "hook slots left taken")
        }

        @Test("configuration values out of range are typed errors naming the value",
              arguments: [
                UserfaultfdMonitor.Configuration(granuleSize: 3 << 20), .init(granuleSize: 1),
                .init(eventsPerRead: 0), .init(eventsPerRead: .max), .init(queueSlots: -1), .init(queueSlots: .max),
                .init(spinMicroseconds: -5), .init(spinMicroseconds: .max),
              ])
        func badConfiguration(configuration: UserfaultfdMonitor.Configuration) {
            do {
                _ = try UserfaultfdMonitor(space: AddressSpace(), configuration: configuration)
                Issue.record("accepted \(configuration)")
            } catch {
                guard case .invalidConfiguration(let argument, _) = error else {
                    Issue.record("\(error)")
                    return
                }
                #expect(!argument.isEmpty)
            }
        }
    }
}

/// Threads of this process that are a monitor's reader or worker (named so by the monitor).
func monitorThreadCount() -> Int {
    names(in: "/proc/self/task").filter { task in
        let comm = contents(of: "/proc/self/task/\(task)/comm")
        return comm.hasPrefix("uffd-reader") || comm.hasPrefix("uffd-worker")
    }.count
}

/// Open userfaultfd descriptors of this process.
func userfaultfdCount() -> Int {
    names(in: "/proc/self/fd").filter { fd in
        var target = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
        return n > 0 && String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).contains("userfaultfd")
    }.count
}

private func names(in path: String) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var result: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { result.append(name) }
    }
    return result
}

private func contents(of path: String) -> String {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 64)
    let n = read(fd, &bytes, bytes.count)
    return n > 0 ? String(decoding: bytes[0..<n], as: UTF8.self) : ""
}
