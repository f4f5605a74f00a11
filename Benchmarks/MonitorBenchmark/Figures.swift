import BenchmarkSupport
import CShims
#if canImport(Glibc)
import Glibc
#endif
import MMUNotifier
import MemoryMonitor
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
        _ = subscription.readBegin()
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
    var watches: [Double] = []
    for _ in 0..<rounds { watches.append(watchCost(monitor: monitor, iterations: 20000)) }
    print("watch + unwatch of a buffer in a watched granule: \(format(median(watches) / 1000)) µs")
    print("statistics: \(monitor.statistics)")
    for pool in [plainPool.reservation, watchedPool.reservation] {
        _ = cshims_raw_munmap(UnsafeMutableRawPointer(bitPattern: pool), 6 << 20)
    }
}
