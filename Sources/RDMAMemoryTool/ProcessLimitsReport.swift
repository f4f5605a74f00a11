#if canImport(Glibc)
import Glibc
#endif

/// The process limits that bound what can be registered and watched: RLIMIT_MEMLOCK caps the
/// bytes a user who is not root may pin (a cache keeps below 3/4 of it), and `vm.max_map_count`
/// caps how many mappings watching may split memory into.
struct ProcessLimitsReport: Codable, Equatable, Sendable {
    /// Nil when getrlimit failed.
    var memlockSoft: ResourceLimit?
    var memlockHard: ResourceLimit?
    /// Root may pin beyond RLIMIT_MEMLOCK (CAP_IPC_LOCK), so a cache then ignores it.
    var isRoot: Bool
    /// `vm.max_map_count`; nil when unreadable.
    var maxMapCount: Int?

    enum CodingKeys: String, CodingKey {
        case memlockSoft = "rlimit_memlock_soft", memlockHard = "rlimit_memlock_hard", isRoot = "is_root"
        case maxMapCount = "vm_max_map_count"
    }

    static func collect() -> ProcessLimitsReport {
        let memlock = SystemSettings.memlockLimit()
        return ProcessLimitsReport(memlockSoft: memlock?.soft, memlockHard: memlock?.hard, isRoot: geteuid() == 0,
                                   maxMapCount: SystemSettings.integer(sysctl: "vm/max_map_count").flatMap(Int.init(exactly:)))
    }
}
