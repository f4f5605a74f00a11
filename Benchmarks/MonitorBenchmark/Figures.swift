import BenchmarkSupport
import CShims
import CTestShims
#if canImport(Glibc)
import Glibc
#endif
import NotifierEngine
import Monitors
import Synchronization

let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))

func mapTouched(_ length: UInt) -> UInt {
    let pointer = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
    guard let pointer, pointer != MAP_FAILED else { fatalError("mmap: \(errno)") }
    return UInt(bitPattern: pointer)
}

func mapUntouched(_ length: UInt) -> UInt {
    let pointer = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    guard let pointer, pointer != MAP_FAILED else { fatalError("mmap: \(errno)") }
    return UInt(bitPattern: pointer)
}

/// Where the benchmark's mappings go. `.kernel`: wherever mmap puts them, usually beside
/// shared libraries, so the monitor registers each buffer as its own piece. `.pool`: a hole in
/// a reserved 2 MiB-aligned region of anonymous memory (a buffer pool), whose granule the
/// monitor registers whole (an anchor page at its start is watched for the whole run).
enum Placement: CustomStringConvertible {
    case kernel
    case pool(hole: UInt)

    var description: String {
        switch self {
        case .kernel: "kernel-placed"
        case .pool: "in a pool"
        }
    }

    /// A pool: 2 MiB aligned, with a 1 MiB hole in its middle for the mapping under test.
    static func reservePool() -> (placement: Placement, anchor: UInt, reservation: UInt) {
        let granule: UInt = 2 << 20
        let reservation = mapUntouched(3 * granule)
        let base = (reservation + granule - 1) & ~(granule - 1)
        let hole = base + granule / 4
        guard cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: hole), granule / 2) == 0 else { fatalError("munmap hole") }
        return (.pool(hole: hole), base, reservation)
    }

    func map(_ length: UInt) -> UInt {
        switch self {
        case .kernel: return mapTouched(length)
        case let .pool(hole):
            let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | 0x100000 /* MAP_FIXED_NOREPLACE */
            let pointer = mmap(UnsafeMutableRawPointer(bitPattern: hole), Int(length), PROT_READ | PROT_WRITE, flags, -1, 0)
            guard let pointer, pointer != MAP_FAILED, UInt(bitPattern: pointer) == hole else { fatalError("mmap in pool: \(errno)") }
            return hole
        }
    }
}

/// Mean nanoseconds of one `munmap` of a touched `length`-byte mapping, watched or not.
/// Only the munmap call is timed; mapping and watching happen outside the clock.
func munmapCost(length: UInt, placement: Placement, watched monitor: UserfaultfdMonitor?, iterations: Int) -> Double {
    var total: UInt64 = 0
    for _ in 0..<iterations {
        let base = placement.map(length)
        if let monitor {
            guard let range = try? AddressRange(start: base, length: length), (try? monitor.watch(range)) != nil else {
                fatalError("watch failed")
            }
        }
        let start = nowNanoseconds()
        munmap(UnsafeMutableRawPointer(bitPattern: base), Int(length))
        total += nowNanoseconds() - start
        if let monitor, let range = try? AddressRange(start: base, length: length) { try? monitor.unwatch(range) }
    }
    return Double(total) / Double(iterations)
}

/// Median nanoseconds from `munmap` returning to the engine's invalidation being done (a
/// `readBegin` that starts then returns only once the window closed).
func invalidationLatency(monitor: UserfaultfdMonitor, space: AddressSpace, iterations: Int) -> Double {
    var samples: [Double] = []
    samples.reserveCapacity(iterations)
    for _ in 0..<iterations {
        let base = mapTouched(pageSize)
        guard let range = try? AddressRange(start: base, length: pageSize),
              (try? monitor.watch(range)) != nil,
              let subscription = try? space.insertInterval(range, invalidate: { sub, _, seq in
                  sub.setSequence(seq)
                  return true
              }) else { fatalError("setup failed") }
        munmap(UnsafeMutableRawPointer(bitPattern: base), Int(pageSize))
        let returned = nowNanoseconds()
        _ = try? subscription.readBegin()
        samples.append(Double(nowNanoseconds() - returned))
        try? subscription.remove()
        try? monitor.unwatch(range)
    }
    return median(samples)
}

/// Unmaps per second of watched pages while `threads` threads unmap as fast as they can (each
/// its own watched region, page by page). With `raw`, by system call, so each is an event the
/// monitor reads (the events per second it sustains); otherwise through munmap(), which an
/// intercepting monitor handles in the calling threads.
func unmapStorm(monitor: UserfaultfdMonitor, threads: Int, pagesPerThread: Int, raw: Bool) -> Double {
    let regions = (0..<threads).map { _ -> UInt in
        let length = UInt(pagesPerThread) * pageSize
        let base = mapUntouched(length)
        guard let range = try? AddressRange(start: base, length: length), (try? monitor.watch(range)) != nil else {
            fatalError("watch failed")
        }
        return base
    }
    let before = monitor.statistics
    let start = nowNanoseconds()
    let workers = regions.map { base in
        startThread {
            for page in 0..<pagesPerThread {
                let address = UnsafeMutableRawPointer(bitPattern: base + UInt(page) * pageSize)
                if raw { _ = cshims_raw_munmap(address, pageSize) } else { munmap(address, Int(pageSize)) }
            }
        }
    }
    for worker in workers { worker.join() }
    let seconds = Double(nowNanoseconds() - start) / 1e9
    let after = monitor.statistics
    let events = after.unmapEvents - before.unmapEvents + after.interceptedUnmaps - before.interceptedUnmaps
    for base in regions {
        if let range = try? AddressRange(start: base, length: UInt(pagesPerThread) * pageSize) { try? monitor.unwatch(range) }
    }
    return Double(events) / seconds
}

/// What the hooks cost a call that touches no watched memory: mean nanoseconds of the call
/// through the C library (and so through the hook, with a monitor running) against the same
/// call as a raw system call, alternated call by call on the same unwatched memory.
struct HookCost {
    let name: String
    let hooked: Double
    let raw: Double
    var ratio: Double { hooked / raw }
}

func hookCosts(iterations: Int) -> [HookCost] {
    func time(_ body: () -> Void) -> UInt64 {
        let start = nowNanoseconds()
        body()
        return nowNanoseconds() - start
    }
    var costs: [HookCost] = []
    // munmap of a touched 4 KiB mapping. Two mappings made one after the other are neighbours
    // the kernel merges into one, and the first unmap of the two splits it: which one goes
    // first alternates, so both sides pay the split equally often.
    var hooked: UInt64 = 0, raw: UInt64 = 0
    for index in 0..<iterations {
        let a = mapTouched(pageSize), b = mapTouched(pageSize)
        let hookedUnmap = { time { munmap(UnsafeMutableRawPointer(bitPattern: a), Int(pageSize)) } }
        let rawUnmap = { time { _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: b), pageSize) } }
        if index % 2 == 0 {
            hooked += hookedUnmap()
            raw += rawUnmap()
        } else {
            raw += rawUnmap()
            hooked += hookedUnmap()
        }
    }
    costs.append(HookCost(name: "munmap 4 KiB", hooked: Double(hooked) / Double(iterations), raw: Double(raw) / Double(iterations)))
    // mprotect to read-only (the only kind the hook looks at), then back (untimed).
    let page = mapTouched(16 * pageSize)
    let pointer = UnsafeMutableRawPointer(bitPattern: page)
    hooked = 0
    raw = 0
    for _ in 0..<iterations {
        hooked += time { mprotect(pointer, Int(16 * pageSize), PROT_READ) }
        _ = ctest_raw_mprotect(pointer, 16 * pageSize, PROT_READ | PROT_WRITE)
        raw += time { _ = ctest_raw_mprotect(pointer, 16 * pageSize, PROT_READ) }
        _ = ctest_raw_mprotect(pointer, 16 * pageSize, PROT_READ | PROT_WRITE)
    }
    costs.append(HookCost(name: "mprotect(PROT_READ) 64 KiB", hooked: Double(hooked) / Double(iterations), raw: Double(raw) / Double(iterations)))
    munmap(pointer, Int(16 * pageSize))
    // madvise of unwatched memory: a hint (WILLNEED) and advice that replaces pages (DONTNEED,
    // which the hook looks at: one lock-free look at the granule maps before and after).
    let advised = mapTouched(16 * pageSize)
    let advisedPointer = UnsafeMutableRawPointer(bitPattern: advised)
    for (name, advice) in [("madvise(MADV_WILLNEED) 64 KiB", MADV_WILLNEED), ("madvise(MADV_DONTNEED) 64 KiB", MADV_DONTNEED)] {
        hooked = 0
        raw = 0
        for index in 0..<iterations {
            let hookedAdvise = { time { _ = madvise(advisedPointer, Int(16 * pageSize), advice) } }
            let rawAdvise = { time { _ = ctest_raw_madvise(advisedPointer, 16 * pageSize, advice) } }
            if index % 2 == 0 {
                hooked += hookedAdvise()
                raw += rawAdvise()
            } else {
                raw += rawAdvise()
                hooked += hookedAdvise()
            }
        }
        costs.append(HookCost(name: name, hooked: Double(hooked) / Double(iterations), raw: Double(raw) / Double(iterations)))
    }
    munmap(advisedPointer, Int(16 * pageSize))
    // shmat of a 64 KiB segment where the kernel chooses, and shmat(SHM_REMAP) over unwatched
    // memory (the hook asks the segment's size first); each detached untimed by raw shmdt.
    let id = cshims_shm_create(64 << 10)
    defer { _ = cshims_shm_remove(id) }
    for remap in [false, true] {
        hooked = 0
        raw = 0
        let target = remap ? UnsafeMutableRawPointer(bitPattern: mapTouched(64 << 10)) : nil
        let flags = remap ? CSHIMS_SHM_REMAP : 0
        for _ in 0..<iterations {
            var attached: UnsafeMutableRawPointer?
            hooked += time { attached = cshims_shmat(id, target, flags) }
            _ = ctest_raw_shmdt(attached)
            raw += time { attached = ctest_raw_shmat(id, target, flags) }
            _ = ctest_raw_shmdt(attached)
        }
        costs.append(HookCost(name: remap ? "shmat(SHM_REMAP) 64 KiB" : "shmat 64 KiB", hooked: Double(hooked) / Double(iterations),
                              raw: Double(raw) / Double(iterations)))
    }
    // shmdt (the hook looks up the segment's extent while a monitor runs).
    hooked = 0
    raw = 0
    for _ in 0..<iterations {
        let a = ctest_raw_shmat(id, nil, 0)
        hooked += time { _ = cshims_shmdt(a) }
        let b = ctest_raw_shmat(id, nil, 0)
        raw += time { _ = ctest_raw_shmdt(b) }
    }
    costs.append(HookCost(name: "shmdt 64 KiB", hooked: Double(hooked) / Double(iterations), raw: Double(raw) / Double(iterations)))
    return costs
}

/// Nanoseconds of one `watch` + `unwatch` of a page in an already watched granule.
func watchCost(monitor: UserfaultfdMonitor, iterations: Int) -> Double {
    let length: UInt = 2 << 20
    let base = mapUntouched(length * 2)
    let granule = (base + length - 1) & ~(length - 1)
    guard let anchor = try? AddressRange(start: granule, length: pageSize), (try? monitor.watch(anchor)) != nil else {
        fatalError("watch failed")
    }
    let start = nowNanoseconds()
    for index in 0..<iterations {
        let page = granule + UInt(index % 256) * pageSize
        guard let range = try? AddressRange(start: page, length: 64) else { continue }
        try? monitor.watch(range)
        try? monitor.unwatch(range)
    }
    let mean = Double(nowNanoseconds() - start) / Double(iterations)
    try? monitor.unwatch(anchor)
    munmap(UnsafeMutableRawPointer(bitPattern: base), Int(length * 2))
    return mean
}

func runFigures(rounds: Int, configuration: UserfaultfdMonitor.Configuration) {
    let space = AddressSpace()
    let monitor: UserfaultfdMonitor
    do {
        monitor = try UserfaultfdMonitor(space: space, configuration: configuration)
    } catch {
        print("userfaultfd unavailable: \(error)")
        return
    }
    defer { monitor.shutdown() }
    let path = configuration.interceptsMunmap ? "munmap intercepted" : "munmap as userfaultfd events"
    print("\nMonitorBenchmark, \(path): privilege \(monitor.privilege), features 0x\(String(monitor.features, radix: 16)), "
          + "reader spin \(configuration.spinMicroseconds) µs, \(rounds) rounds, medians; ratios taken within each round")
    // The unwatched pool is never watched; the watched one has an anchor page watched at its
    // start, so its granule is registered whole.
    let plainPool = Placement.reservePool()
    let watchedPool = Placement.reservePool()
    guard let anchor = try? AddressRange(start: watchedPool.anchor, length: pageSize), (try? monitor.watch(anchor)) != nil else {
        fatalError("watch failed")
    }
    defer { try? monitor.unwatch(anchor) }
    for (plainPlacement, watchedPlacement) in [(Placement.kernel, Placement.kernel), (plainPool.placement, watchedPool.placement)] {
        for length: UInt in [4 << 10, 64 << 10] {
            var ratios: [Double] = []
            var watchedTimes: [Double] = []
            var plainTimes: [Double] = []
            for _ in 0..<rounds {
                let plain = munmapCost(length: length, placement: plainPlacement, watched: nil, iterations: 2000)
                let watched = munmapCost(length: length, placement: watchedPlacement, watched: monitor, iterations: 2000)
                plainTimes.append(plain)
                watchedTimes.append(watched)
                ratios.append(watched / plain)
            }
            print("munmap \(length >> 10) KiB touched, \(watchedPlacement): unwatched \(format(median(plainTimes) / 1000)) µs, "
                  + "watched \(format(median(watchedTimes) / 1000)) µs, ratio \(format(median(ratios)))x (goal <= 1.2x)")
        }
    }
    var latencies: [Double] = []
    for _ in 0..<rounds { latencies.append(invalidationLatency(monitor: monitor, space: space, iterations: 2000)) }
    print("munmap return -> invalidation done (readBegin returns): median \(format(median(latencies) / 1000)) µs")
    var rates: [Double] = []
    for _ in 0..<rounds { rates.append(unmapStorm(monitor: monitor, threads: 2, pagesPerThread: 8192, raw: true)) }
    print("unmap storm, 2 threads, raw syscalls (every one an event): \(format(median(rates) / 1000, 1)) k events/s")
    if configuration.interceptsMunmap {
        rates = []
        for _ in 0..<rounds { rates.append(unmapStorm(monitor: monitor, threads: 2, pagesPerThread: 8192, raw: false)) }
        print("unmap storm, 2 threads, munmap() intercepted: \(format(median(rates) / 1000, 1)) k unmaps/s")
    }
    if configuration.interceptsMunmap {
        let rounds = (0..<rounds).map { _ in hookCosts(iterations: 2000) }
        for (index, first) in rounds[0].enumerated() {
            let hooked = median(rounds.map { $0[index].hooked }), raw = median(rounds.map { $0[index].raw })
            print("unwatched \(first.name): hooked \(format(hooked / 1000)) µs, raw syscall \(format(raw / 1000)) µs, "
                  + "ratio \(format(median(rounds.map { $0[index].ratio })))x")
        }
    }
    var watches: [Double] = []
    for _ in 0..<rounds { watches.append(watchCost(monitor: monitor, iterations: 20000)) }
    print("watch + unwatch of a buffer in a watched granule: \(format(median(watches) / 1000)) µs")
    print("statistics: \(monitor.statistics)")
    for pool in [plainPool.reservation, watchedPool.reservation] {
        _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: pool), 6 << 20)
    }
}
