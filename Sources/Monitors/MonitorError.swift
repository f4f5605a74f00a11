import NotifierEngine
import SystemPackage

/// Every way the monitors refuse bad input or fail: which call, on what argument, and the errno
/// where the OS said no. Nothing in the monitors traps on input.
public enum MonitorError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call failed: `call(argument)` gave `errno`.
    case systemCall(call: String, argument: String, errno: Errno)
    /// userfaultfd is refused in every form this process may use. `attempts` lists each form
    /// and its errno; the description names the two settings an administrator can change.
    case userfaultfdUnavailable(attempts: [UserfaultfdAttempt])
    /// The kernel lacks an event the monitor cannot work without (`missing`: UFFD_FEATURE_* bits).
    case missingFeatures(requested: UInt64, offered: UInt64, missing: UInt64)
    /// userfaultfd cannot watch this memory; register it uncached and report `reason`.
    case unwatchable(range: AddressRange, reason: UnwatchableReason)
    /// A range that is empty, wraps, or does not fit the address space.
    case invalidRange(call: String, argument: String)
    /// `unwatch` of a range that `watch` did not count.
    case notWatched(range: AddressRange)
    /// The call was made on the monitor's reader thread, which must never wait for anything
    /// (it runs no user code; this guards against misuse).
    case calledFromMonitorThread(call: String)
    /// The caller asked for explicit-only mode: nothing is watched, by request.
    case explicitOnlyRequested
    /// The monitor was shut down.
    case shutDown
    /// The monitor's `thread` ("reader" or "worker") failed at `call` (with `errno` where the OS
    /// gave one): monitoring stopped for good, every cached region was revoked, and memory is
    /// registered uncached from then on.
    case monitorFailed(thread: String, call: String, errno: Errno?)
    /// A configuration value the monitor cannot work with.
    case invalidConfiguration(argument: String, reason: String)
    /// The engine refused (for example, its address space was released).
    case engine(NotifierError)

    public var description: String {
        switch self {
        case let .systemCall(call, argument, errno):
            return "\(call)(\(argument)): \(errno) (errno \(errno.rawValue))"
        case let .userfaultfdUnavailable(attempts):
            let tried = attempts.map { "\($0.method): \($0.errno)" }.joined(separator: "; ")
            return "userfaultfd is not available to this process (\(tried)). Allow it with "
                + "`sysctl vm.unprivileged_userfaultfd=1`, or give this user access to "
                + "/dev/userfaultfd (root-only, mode 0600, by default); until then only explicit "
                + "invalidation works and memory that may be unmapped must not be cached"
        case let .missingFeatures(requested, offered, missing):
            return "userfaultfd lacks features 0x\(String(missing, radix: 16)) "
                + "(requested 0x\(String(requested, radix: 16)), kernel offers 0x\(String(offered, radix: 16)))"
        case let .unwatchable(range, reason):
            return "cannot watch \(range): \(reason)"
        case let .invalidRange(call, argument):
            return "\(call)(\(argument)): invalid range"
        case let .notWatched(range):
            return "unwatch(\(range)): the range is not watched"
        case let .calledFromMonitorThread(call):
            return "\(call) called from the monitor's reader thread: it would deadlock"
        case .explicitOnlyRequested:
            return "explicit-only mode was requested: memory is not watched, only explicit invalidation reaches the engine"
        case .shutDown:
            return "the monitor was shut down"
        case let .monitorFailed(thread, call, errno):
            let cause = errno.map { ": \($0) (errno \($0.rawValue))" } ?? ""
            return "the userfaultfd monitor's \(thread) thread failed at \(call)\(cause); monitoring stopped, "
                + "every cached region was revoked, and memory is registered uncached from now on"
        case let .invalidConfiguration(argument, reason):
            return "UserfaultfdMonitor.Configuration(\(argument)): \(reason)"
        case let .engine(error):
            return "notifier engine: \(error)"
        }
    }
}

/// One way of obtaining a userfaultfd that was tried, and why it failed.
public struct UserfaultfdAttempt: Error, Equatable, Sendable {
    public var method: String
    public var errno: Errno
    public init(method: String, errno: Errno) {
        self.method = method
        self.errno = errno
    }
}

/// Why userfaultfd cannot watch a range: the cache then registers the memory uncached and
/// says so, instead of caching it silently.
public enum UnwatchableReason: Equatable, Sendable, CustomStringConvertible {
    /// A mapping of a regular file (`path`): userfaultfd watches only anonymous, shmem and
    /// hugetlb memory (EINVAL).
    case fileBacked(path: String)
    /// System V shared memory (`shmat`): userfaultfd refuses to register it (EINVAL, measured
    /// on 6.1 and 6.18), so `shmdt` can never be reported: invalidate explicitly around it.
    case sysVSharedMemory
    /// Part of the range is registered with another userfaultfd (EBUSY).
    case ownedByAnotherUserfaultfd
    /// hugetlb memory on a kernel without UFFD_FEATURE_WP_HUGETLBFS_SHMEM, or a range not
    /// aligned to the huge page size (EINVAL).
    case hugetlbUnsupported
    /// No mapping covers (all of) the range.
    case notMapped
    /// Memory whose pages can be replaced with no userfaultfd event: a `MAP_SHARED` mapping
    /// (memfd, tmpfs and `/dev/shm` files, `MAP_SHARED | MAP_ANONYMOUS`, `/dev/zero`) or a mapping
    /// of a file (`mapping` says which, and where). Truncation or hole punching through any
    /// descriptor, or another process's `MADV_REMOVE`, swaps the pages under a registration.
    case sharedMemory(mapping: String)
    /// Something else: the call and errno that refused.
    case refused(call: String, errno: Errno)

    public var description: String {
        switch self {
        case let .fileBacked(path): return "file-backed mapping of \(path) (userfaultfd: EINVAL)"
        case .sysVSharedMemory: return "System V shared memory (userfaultfd: EINVAL; invalidate explicitly around shmdt)"
        case .ownedByAnotherUserfaultfd: return "registered with another userfaultfd (EBUSY)"
        case .hugetlbUnsupported: return "hugetlb memory this kernel cannot watch (EINVAL)"
        case .notMapped: return "not (entirely) mapped"
        case let .sharedMemory(mapping):
            return "shared memory (\(mapping)): truncation or hole punching through any descriptor, or another "
                + "process, can replace its pages and userfaultfd reports none of it, so it is not cached "
                + "(a process that owns it alone may opt in with cachesSharedMemory and invalidate around every truncation)"
        case let .refused(call, errno): return "\(call): \(errno)"
        }
    }
}
