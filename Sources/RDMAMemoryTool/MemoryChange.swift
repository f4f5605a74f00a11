/// The memory changes `check` makes under a registration: every kind the monitor handles
/// (userfaultfd events, the munmap hook, the shared-memory rule, the shmat hook), each keeping the
/// address usable so that registering it again must give a region of the *new* pages.
enum MemoryChange: String, CaseIterable, Sendable {
    case munmapMapFixed = "munmap_mmap_fixed"
    case rawMunmap = "raw_munmap_mmap"
    case mremap
    case dontNeed = "madvise_dontneed"
    case freeMalloc = "free_malloc"
    case brk = "brk_shrink_grow"
    case memfdTruncate = "memfd_ftruncate"
    case shmatRemap = "shmat_remap"
    case guardPages = "madvise_guard_install"

    /// What was done, as a person would write it.
    var description: String {
        switch self {
        case .munmapMapFixed: "munmap + mmap(MAP_FIXED)"
        case .rawMunmap: "syscall(SYS_munmap) + mmap"
        case .mremap: "mremap (may move)"
        case .dontNeed: "madvise(MADV_DONTNEED)"
        case .freeMalloc: "free() + malloc() 64 MiB"
        case .brk: "brk shrink + grow"
        case .memfdTruncate: "memfd ftruncate shrink + regrow"
        case .shmatRemap: "shmat(SHM_REMAP) over cached memory"
        case .guardPages: "madvise(MADV_GUARD_INSTALL + MADV_GUARD_REMOVE)"
        }
    }

    /// True where the memory is shared from the start, so a default cache registers it uncached
    /// by rule before and after the change (its pages can change with no event): the row must
    /// still be fresh. (shmat's row starts cached: only the segment attached over it is not.)
    var isUncachedByRule: Bool {
        switch self {
        case .memfdTruncate: true
        default: false
        }
    }
}
