#if canImport(Glibc)
import Glibc
#endif
import CShims
import CTestShims
import NotifierEngine
import MemoryMapping
import Monitors

import Testing

let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))

/// A pthread-locked value (TSan sees pthread locking).
final class TestLock<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched between lock and unlock of `mutex`, allocated once.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value
    init(_ value: Value) {
        self.value = value
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// One address space and its userfaultfd monitor, shut down by `close()`.
struct Harness {
    let space = AddressSpace()
    let monitor: UserfaultfdMonitor

    init(configuration: UserfaultfdMonitor.Configuration = .init()) throws {
        monitor = try UserfaultfdMonitor(space: space, configuration: configuration)
    }

    func close() { monitor.shutdown() }
}

/// An interval subscription that records the invalidations reaching a range, as a
/// registration cache entry would (setSequence under the entry's lock).
final class RangeProbe: Sendable {
    final class Log: Sendable {
        let events = TestLock<[InvalidationEvent]>([])
        let ranges = TestLock<[AddressRange]>([])
    }
    let subscription: IntervalSubscription
    let log: Log

    init(_ space: AddressSpace, _ range: AddressRange) throws {
        let log = Log()
        self.log = log
        subscription = try space.insertInterval(range) { sub, invalidation, sequence in
            log.events.withLock {
                sub.setSequence(sequence)
                $0.append(invalidation.event)
            }
            log.ranges.withLock { $0.append(invalidation.range) }
            return true
        }
    }

    /// What a lookup that starts now sees: `readBegin` waits while a window is open, so this
    /// is exactly the guarantee "after the call returned, later lookups see the invalidation".
    var seenByNewLookup: [InvalidationEvent] {
        _ = try? subscription.readBegin()
        return log.events.withLock { $0 }
    }

    var ranges: [AddressRange] { log.ranges.withLock { $0 } }
}

func range(_ start: UInt, _ length: UInt) throws -> AddressRange {
    try AddressRange(start: start, length: length)
}

func range(of mapping: AnonymousMapping) throws -> AddressRange {
    try AddressRange(start: mapping.address, length: UInt(mapping.length))
}

/// mmap of fresh anonymous memory (raw, for tests that unmap it in odd ways).
func mapAnonymous(_ length: UInt, at address: UInt = 0, shared: Bool = false, replace: Bool = true) throws -> UInt {
    var flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS
    if address != 0 { flags |= replace ? MAP_FIXED : 0x100000 /* MAP_FIXED_NOREPLACE */ }
    let pointer = mmap(UnsafeMutableRawPointer(bitPattern: address), Int(length), PROT_READ | PROT_WRITE, flags, -1, 0)
    guard let pointer, pointer != MAP_FAILED else { throw MappingError(call: "mmap", argument: "\(length)", errno: .init(rawValue: errno)) }
    return UInt(bitPattern: pointer)
}

/// Next address for `mapIsolated`: 1 TiB, far below where the kernel places mappings (top-down
/// from near the stack), so a hole left by unmapping one is never handed to another thread's
/// mmap; and inside ThreadSanitizer's low application range (it kills mmaps outside its ranges).
private let isolatedNext = TestLock<UInt>(0x0100_0000_0000)

/// Anonymous memory that a test unmaps and maps again at the same address. Between the two
/// calls the range is a hole; a hole among the process's other mappings would be handed to
/// the next small mmap of any thread (a thread stack, a TLS block) and then overwritten by
/// our MAP_FIXED. Far from them, it is not.
func mapIsolated(_ length: UInt) throws -> UInt {
    let hint = isolatedNext.withLock { next -> UInt in
        defer { next += 1 << 30 }
        return next
    }
    return try mapAnonymous(length, at: hint, replace: false)
}

/// As `mapIsolated`, by a raw system call: a mapping the hooks never saw made (as glibc's malloc
/// makes its large blocks), so what the monitor knows of it comes from the kernel alone.
func mapIsolatedUnseen(_ length: UInt) throws -> UInt {
    let hint = isolatedNext.withLock { next -> UInt in
        defer { next += 1 << 30 }
        return next
    }
    let raw = ctest_raw_mmap_anonymous(UnsafeMutableRawPointer(bitPattern: hint), length)
    guard let raw, raw == UnsafeMutableRawPointer(bitPattern: hint) else {
        throw MappingError(call: "syscall(SYS_mmap)", argument: "\(length)", errno: .init(rawValue: errno))
    }
    return hint
}

/// mmap at exactly `address` without replacing anything (MAP_FIXED_NOREPLACE): throws EEXIST
/// if something else took the range.
func mapAgain(_ length: UInt, at address: UInt) throws -> UInt {
    try mapAnonymous(length, at: address, replace: false)
}

func unmap(_ address: UInt, _ length: UInt) {
    _ = munmap(UnsafeMutableRawPointer(bitPattern: address), Int(length))
}

/// A bounded stress duration: seconds from `MONITOR_STRESS_SECONDS`, else `defaultSeconds`.
func stressSeconds(_ defaultSeconds: Double) -> Double {
    if let text = getenv("MONITOR_STRESS_SECONDS"), let value = Double(String(cString: text)) { return value }
    return defaultSeconds
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Runs `body` on `count` real pthreads and joins them.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Box: @unchecked Sendable {
        // @unchecked: immutable after init, read by the thread it is handed to.
        let body: @Sendable (Int) -> Void
        let index: Int
        init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int) { self.body = body; self.index = index }
    }
    var threads: [pthread_t] = []
    for index in 0..<count {
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box(body, index)).toOpaque()
        let created = pthread_create(&thread, nil, { context in
            guard let context else { return nil }
            let box = Unmanaged<Box>.fromOpaque(context).takeRetainedValue()
            box.body(box.index)
            return nil
        }, box)
        precondition(created == 0, "pthread_create: \(created)")
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
}

/// Every monitor test runs in this one serialized suite: each test has its own userfaultfd,
/// and two monitors registering neighbouring granules at once would answer each other EBUSY.
@Suite("MonitorsTests", .serialized)
struct MonitorsTests {}

/// Heap pages a test grew with `sbrk` and watches (the first 8 of 16): `old` is the break before,
/// `top` the break after, which the test puts back (`sbrk(-length)`) when it is done.
struct GrownHeap {
    let old: UnsafeMutableRawPointer
    let length: Int
    let watched: AddressRange
    var top: UInt { UInt(bitPattern: old) + UInt(length) }

    /// Grows the heap by 16 pages and watches 8 of them through `monitor`; nil (recorded) when
    /// `sbrk` fails. Throws when malloc moved the break meanwhile: shrinking it then would take
    /// malloc's memory away.
    static func grow(watchedBy monitor: UserfaultfdMonitor) throws -> GrownHeap? {
        let length = Int(16 * pageSize)
        guard let old = cshims_sbrk(length), UInt(bitPattern: old) != UInt.max else {
            Issue.record("sbrk(+\(length)) failed: errno \(errno)")
            return nil
        }
        let start = (UInt(bitPattern: old) + pageSize - 1) & ~(pageSize - 1)
        let heap = GrownHeap(old: old, length: length, watched: try range(start, 8 * pageSize))
        try monitor.watch(heap.watched)
        try #require(UInt(bitPattern: cshims_sbrk(0)) == heap.top, "the break moved under the test")
        return heap
    }
}
