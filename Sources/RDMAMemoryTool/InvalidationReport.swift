import Foundation
import Monitors
import MemoryRegistration

/// How invalidations will reach this process, and the settings that decided it: a stale
/// registration is silent, so a user must be able to see *before* running whether unmaps are
/// watched (userfaultfd), caught in the calling thread (the hooks), or only reported by hand.
struct InvalidationReport: Codable, Equatable, Sendable {
    /// `userfaultfd`, `explicit_only` or `failed` (`MemoryMonitor.shared.mode`).
    var mode: String
    /// How userfaultfd was obtained: `full`, `user_mode_only`, `device_node`; nil without it.
    var privilege: String?
    /// `active`, `active_except_munmap`, `off` (RDMAMEMORY_HOOKS=off), `unavailable`; nil
    /// without userfaultfd (the hooks then feed nothing).
    var hooks: String?
    /// True when `munmap()` through the C library is handled in the calling thread.
    var munmapHooksActive: Bool
    /// The RDMAMEMORY_HOOKS variable as this process saw it (`off` switches the hooks off).
    var hooksEnvironment: String?
    /// The monitor's own words: the mode, and why (the error when userfaultfd was refused).
    var detail: String
    /// Whether a default cache caches `MAP_SHARED` and file-backed memory (it does not).
    var cachesSharedMemory: Bool
    /// The rule behind `cachesSharedMemory`, in words.
    var sharedMemory: String
    /// `vm.unprivileged_userfaultfd` (1: any user may use userfaultfd); nil when unreadable.
    var unprivilegedUserfaultfd: Int?
    var devUserfaultfdExists: Bool
    /// Readable and writable by this process (what `USERFAULTFD_IOC_NEW` needs).
    var devUserfaultfdAccessible: Bool

    enum CodingKeys: String, CodingKey {
        case mode, privilege, hooks, munmapHooksActive = "munmap_hooks_active", hooksEnvironment = "hooks_environment"
        case detail, cachesSharedMemory = "caches_shared_memory", sharedMemory = "shared_memory"
        case unprivilegedUserfaultfd = "vm_unprivileged_userfaultfd"
        case devUserfaultfdExists = "dev_userfaultfd_exists", devUserfaultfdAccessible = "dev_userfaultfd_accessible"
    }

    static let sharedMemoryRule = "MAP_SHARED and file-backed memory (memfd, tmpfs, /dev/shm, files) is registered "
        + "uncached: truncation, hole punching or another process's MADV_REMOVE replaces its pages with no event "
        + "userfaultfd or a hook can see (Options.cachesSharedMemory opts in, with explicit invalidation)"

    /// Starts the process's monitor (`MemoryMonitor.shared`) if nothing has yet, and reads the
    /// settings that decide its mode.
    static func collect() -> InvalidationReport {
        let mode = MemoryMonitor.shared.mode
        var report = InvalidationReport(
            mode: "", munmapHooksActive: false,
            hooksEnvironment: ProcessInfo.processInfo.environment["RDMAMEMORY_HOOKS"], detail: mode.description,
            cachesSharedMemory: RegistrationCache.Options().cachesSharedMemory, sharedMemory: sharedMemoryRule,
            unprivilegedUserfaultfd: SystemSettings.integer(sysctl: "vm/unprivileged_userfaultfd").flatMap(Int.init(exactly:)),
            devUserfaultfdExists: SystemSettings.exists("/dev/userfaultfd"),
            devUserfaultfdAccessible: SystemSettings.isReadableAndWritable("/dev/userfaultfd"))
        switch mode {
        case let .userfaultfd(privilege, hooks):
            report.mode = "userfaultfd"
            report.privilege = switch privilege {
            case .full: "full"
            case .userModeOnly: "user_mode_only"
            case .deviceNode: "device_node"
            }
            report.hooks = switch hooks {
            case .active: "active"
            case .activeExceptMunmap: "active_except_munmap"
            case .disabledByEnvironment: "off"
            case .unavailable: "unavailable"
            case .shadowed: "shadowed"
            }
            report.munmapHooksActive = hooks == .active
        case .explicitOnly:
            report.mode = "explicit_only"
        case .failed:
            report.mode = "failed"
        }
        return report
    }
}
