#if canImport(Glibc)
import Glibc
#endif
import CMunmapHook
import MMUNotifier
import Synchronization

/// The process's `munmap`, for monitors that take unmaps in the calling thread.
///
/// Why: the kernel holds a thread in `munmap` of userfaultfd-registered memory until the
/// monitor's reader has read the UNMAP event: a sleep and a wake-up, which on a virtual machine
/// whose idle vCPUs halt costs tens of microseconds (measured: a watched 4 KiB munmap 10× an
/// unwatched one). Hook-based caches (UCX, libfabric) invalidate in the caller instead and pay
/// almost nothing, but miss raw system calls. This does both: `munmap` calls that come through
/// the C library's symbol are handled here, the rest still reach the monitor as events.
///
/// For an unmap that touches watched granules, in the calling thread: open a window on each
/// such monitor's address space and invalidate the range (callbacks run here, as they would on
/// the worker), unregister the watched part from userfaultfd, unmap, and close the windows
/// after the unmap returned. Unmaps of memory nobody watches cost a check of each monitor's
/// granule table. `UserfaultfdMonitor.Configuration.interceptsMunmap` turns it off per monitor.
///
/// Not async-signal-safe when a monitor is running (it takes locks): a signal handler must
/// not `munmap` watched memory.
enum MunmapHook {
    private static let interceptors = Locked<[UnmapInterceptor]>([])
    /// How many monitors take part: 0 sends every unmap straight to the kernel without a lock.
    private static let participants = Atomic<Int>(0)
    private static let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))

    static func add(_ interceptor: UnmapInterceptor) {
        interceptors.withLock { list in
            list.append(interceptor)
            participants.store(list.count, ordering: .releasing)
        }
        cmunmaphook_install(munmapHookEntry)
    }

    static func remove(_ interceptor: UnmapInterceptor) {
        interceptors.withLock { list in
            list.removeAll { $0 === interceptor }
            participants.store(list.count, ordering: .releasing)
        }
    }

    /// `munmap(address, length)`: 0 or the errno value.
    static func unmap(_ address: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
        guard participants.load(ordering: .acquiring) > 0, let pages = pages(address, length) else {
            return cmunmaphook_unmap(address, length)
        }
        let list = interceptors.withLock { $0 }
        return unmap(address, length, pages, through: list[...])
    }

    /// The pages `munmap(address, length)` unmaps; nil for what the kernel refuses with EINVAL
    /// (unaligned, empty, wrapping), which goes to it untouched so nothing is unregistered.
    private static func pages(_ address: UnsafeMutableRawPointer?, _ length: Int) -> PageRange? {
        let start = UInt(bitPattern: address)
        guard length > 0, start & (pageSize - 1) == 0 else { return nil }
        let (last, overflow) = start.addingReportingOverflow(UInt(length) - 1)
        let (end, roundingOverflow) = (last | (pageSize - 1)).addingReportingOverflow(1)
        guard !overflow, !roundingOverflow else { return nil }
        return PageRange(start: start, end: end)
    }

    /// Opens a window for each interceptor that watches part of `pages` (recursively, so each
    /// window lives on this stack until the unmap returned), then unmaps.
    private static func unmap(_ address: UnsafeMutableRawPointer?, _ length: Int, _ pages: PageRange,
                              through list: ArraySlice<UnmapInterceptor>) -> Int32 {
        guard let interceptor = list.first else { return cmunmaphook_unmap(address, length) }
        let rest = list.dropFirst()
        guard interceptor.touchesWatched(pages), let range = try? AddressRange(start: pages.start, length: pages.length)
        else { return unmap(address, length, pages, through: rest) }
        let window = interceptor.space.beginInvalidation()
        window.invalidate(range, event: .unmap)
        interceptor.unregisterWatched(pages)
        let failure = unmap(address, length, pages, through: rest)
        if failure != 0 { interceptor.reregisterWatched(pages) }
        window.end()
        return failure
    }
}

/// The C hook's entry (a nonisolated function: the hook runs on any thread).
private func munmapHookEntry(_ address: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    MunmapHook.unmap(address, length)
}
