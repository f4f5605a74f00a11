#if canImport(Glibc)
import Glibc
#endif
import CShims
import SystemPackage
import Synchronization

/// How this process obtained its userfaultfd (the privilege it needed).
public enum UserfaultfdPrivilege: String, Sendable, Equatable, CustomStringConvertible {
    /// The plain system call: root, CAP_SYS_PTRACE, or `vm.unprivileged_userfaultfd = 1`.
    case full
    /// `UFFD_USER_MODE_ONLY`: allowed to every user since Linux 5.11; faults taken inside the
    /// kernel are not reported, which a monitor of UNMAP/REMOVE/REMAP events never needs.
    case userModeOnly
    /// `ioctl(USERFAULTFD_IOC_NEW)` on `/dev/userfaultfd` (Linux 6.1+; access by file mode).
    case deviceNode

    public var description: String { rawValue }
}

/// Which ways to try, in order. `.automatic`: as root the plain call, otherwise
/// `UFFD_USER_MODE_ONLY`, then `/dev/userfaultfd`.
public enum UserfaultfdStrategy: Sendable, Equatable {
    case automatic
    case only(UserfaultfdPrivilege)

    var order: [UserfaultfdPrivilege] {
        switch self {
        case .automatic:
            return geteuid() == 0 ? [.full, .userModeOnly, .deviceNode] : [.userModeOnly, .full, .deviceNode]
        case let .only(privilege):
            return [privilege]
        }
    }
}

/// The userfaultfd feature bits the monitor uses.
public enum UserfaultfdFeature {
    public static let eventRemap: UInt64 = 1 << 2
    public static let eventRemove: UInt64 = 1 << 3
    public static let eventUnmap: UInt64 = 1 << 6
    public static let wpHugetlbfsShmem: UInt64 = 1 << 12
    /// The events without which a monitor cannot keep its promise.
    public static let required: UInt64 = eventUnmap | eventRemove | eventRemap
    /// Wanted where offered: write-protect registration of shmem (MAP_SHARED anonymous) and hugetlb.
    public static let optional: UInt64 = wpHugetlbfsShmem
}

/// An open, API-negotiated userfaultfd and the ioctls the monitor issues on it.
/// Non-blocking and close-on-exec: the monitor thread polls it, and an exec'd child must not
/// keep the monitor's context alive.
struct UserfaultfdDescriptor: Sendable {
    let fd: Int32
    let privilege: UserfaultfdPrivilege
    /// Features enabled on this descriptor.
    let features: UInt64
    /// Features the kernel offers.
    let offered: UInt64

    static func open(strategy: UserfaultfdStrategy) throws(MonitorError) -> UserfaultfdDescriptor {
        var attempts: [UserfaultfdAttempt] = []
        for privilege in strategy.order {
            switch rawOpen(privilege) {
            case let .failure(attempt):
                attempts.append(attempt)
            case let .success(probe):
                // UFFDIO_API may be issued once per descriptor: learn what is offered on a
                // throw-away one, then ask a fresh one for what we need.
                var api = uffdio_api(api: 0xAA, features: 0, ioctls: 0)
                let probed = cshims_ioctl_pointer(probe, CSHIMS_UFFDIO_API, &api)
                let probeErrno = Errno(rawValue: errno)
                close(probe)
                guard probed == 0 else {
                    throw .systemCall(call: "ioctl(UFFDIO_API)", argument: "features: 0", errno: probeErrno)
                }
                let offered = api.features
                let wanted = UserfaultfdFeature.required | (UserfaultfdFeature.optional & offered)
                if offered & UserfaultfdFeature.required != UserfaultfdFeature.required {
                    throw .missingFeatures(requested: wanted, offered: offered,
                                           missing: UserfaultfdFeature.required & ~offered)
                }
                guard case let .success(fd) = rawOpen(privilege) else {
                    throw .systemCall(call: "userfaultfd", argument: "\(privilege)", errno: Errno(rawValue: errno))
                }
                var negotiated = uffdio_api(api: 0xAA, features: wanted, ioctls: 0)
                if cshims_ioctl_pointer(fd, CSHIMS_UFFDIO_API, &negotiated) != 0 {
                    let failure = Errno(rawValue: errno)
                    close(fd)
                    throw .systemCall(call: "ioctl(UFFDIO_API)",
                                      argument: "features: 0x\(String(wanted, radix: 16))", errno: failure)
                }
                // Older kernels answer with everything they offer, newer ones with what was
                // enabled: either way the required events must be there.
                let granted = negotiated.features & wanted
                if granted & UserfaultfdFeature.required != UserfaultfdFeature.required {
                    close(fd)
                    throw .missingFeatures(requested: wanted, offered: negotiated.features,
                                           missing: UserfaultfdFeature.required & ~granted)
                }
                return UserfaultfdDescriptor(fd: fd, privilege: privilege, features: wanted, offered: offered)
            }
        }
        throw .userfaultfdUnavailable(attempts: attempts)
    }

    private static func rawOpen(_ privilege: UserfaultfdPrivilege) -> Result<Int32, UserfaultfdAttempt> {
        let flags = O_CLOEXEC | O_NONBLOCK
        switch privilege {
        case .full:
            let fd = cshims_userfaultfd(flags)
            if fd >= 0 { return .success(fd) }
            return .failure(UserfaultfdAttempt(method: "userfaultfd(2)", errno: Errno(rawValue: errno)))
        case .userModeOnly:
            let fd = cshims_userfaultfd(flags | Int32(UFFD_USER_MODE_ONLY))
            if fd >= 0 { return .success(fd) }
            return .failure(UserfaultfdAttempt(method: "userfaultfd(2) with UFFD_USER_MODE_ONLY",
                                               errno: Errno(rawValue: errno)))
        case .deviceNode:
            let device = Glibc.open("/dev/userfaultfd", O_RDWR | O_CLOEXEC)
            if device < 0 {
                return .failure(UserfaultfdAttempt(method: "open(/dev/userfaultfd)", errno: Errno(rawValue: errno)))
            }
            defer { close(device) }
            // USERFAULTFD_IOC_NEW takes the flags as the integer argument itself.
            let fd = cshims_ioctl_pointer(device, CSHIMS_USERFAULTFD_IOC_NEW,
                                          UnsafeMutableRawPointer(bitPattern: UInt(flags)))
            if fd >= 0 { return .success(fd) }
            return .failure(UserfaultfdAttempt(method: "ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW)",
                                               errno: Errno(rawValue: errno)))
        }
    }

    /// UFFDIO_REGISTER in write-protect mode. No page is ever write-protected, so ordinary
    /// faults never wait for the monitor; the registration only subscribes to UNMAP, REMOVE
    /// and REMAP. nil on success.
    func register(start: UInt, length: UInt) -> Errno? {
        var request = uffdio_register(range: uffdio_range(start: UInt64(start), len: UInt64(length)),
                                      mode: UInt64(UFFDIO_REGISTER_MODE_WP), ioctls: 0)
        return cshims_ioctl_pointer(fd, CSHIMS_UFFDIO_REGISTER, &request) == 0 ? nil : Errno(rawValue: errno)
    }

    /// UFFDIO_UNREGISTER. nil on success.
    func unregister(start: UInt, length: UInt) -> Errno? {
        var range = uffdio_range(start: UInt64(start), len: UInt64(length))
        return cshims_ioctl_pointer(fd, CSHIMS_UFFDIO_UNREGISTER, &range) == 0 ? nil : Errno(rawValue: errno)
    }

    /// Asks the kernel whether [start, start + length) is registered in write-protect mode
    /// *now*: UFFDIO_WRITEPROTECT with mode 0 (remove protection that was never set) fails
    /// with ENOENT on a hole or an unregistered mapping and changes nothing otherwise. Linux
    /// 6.1 also requires the range to lie in one VMA. EAGAIN: an event is pending (mmap_changing).
    func isRegistered(start: UInt, length: UInt) -> Errno? {
        var request = uffdio_writeprotect(range: uffdio_range(start: UInt64(start), len: UInt64(length)), mode: 0)
        return cshims_ioctl_pointer(fd, CSHIMS_UFFDIO_WRITEPROTECT, &request) == 0 ? nil : Errno(rawValue: errno)
    }
}

/// Owns a monitor's descriptor number, so that it is given up and closed exactly once, and in
/// the right order for the threads still using it.
///
/// `releaseContext()` points the number at `/dev/null` (`dup3`, keeping close-on-exec): the kernel drops the
/// userfaultfd context as soon as calls in flight on it return, which unregisters every range
/// and wakes every thread still waiting for an unread event (`userfaultfd_release`), while the
/// number stays valid, so a thread that still issues an ioctl on it reaches `/dev/null` and gets
/// an error instead of reaching some file opened later under the same number. `close()` then
/// closes the number, after the last user of it is joined.
final class UserfaultfdFile: Sendable {
    let fd: Int32
    private let released = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)

    /// A fork() child closes its copy at once (see `cshims_userfaultfd_close_in_children`):
    /// otherwise the child would keep the context alive past `releaseContext()`, with every
    /// range still registered and nobody left to read its events.
    init(fd: Int32) {
        self.fd = fd
        _ = cshims_userfaultfd_close_in_children(fd)
    }

    deinit { close() }

    var isReleased: Bool { released.load(ordering: .acquiring) }

    /// Ends the userfaultfd context behind the number (once). No allocation, no lock: the reader
    /// calls it when it fails, while unmapping threads may be waiting for it.
    func releaseContext() {
        if released.exchange(true, ordering: .acquiringAndReleasing) { return }
        let placeholder = Glibc.open("/dev/null", O_RDWR | O_CLOEXEC)
        if placeholder >= 0 {
            _ = cshims_dup_cloexec(placeholder, fd)
            _ = Glibc.close(placeholder)
        } else {
            // No descriptor left for the placeholder: closing is the only way to end the context.
            closed.store(true, ordering: .releasing)
            cshims_userfaultfd_keep_in_children(fd)
            _ = Glibc.close(fd)
        }
    }

    /// Closes the number (once), ending the context first if that has not happened.
    func close() {
        releaseContext()
        if closed.exchange(true, ordering: .acquiringAndReleasing) { return }
        cshims_userfaultfd_keep_in_children(fd)
        _ = Glibc.close(fd)
    }
}
