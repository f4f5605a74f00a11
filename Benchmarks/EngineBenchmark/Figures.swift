import BenchmarkSupport
import NotifierEngine
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

func runAllFigures(runs: Int) {
    print("EngineBenchmark: medians of \(runs) runs")
    report("SRCU readLock+readUnlock", unit: "ns", runs: runs, readLockUnlockNs)
    report("SRCU withReadLock", unit: "ns", runs: runs, withReadLockNs)
    report("synchronize(), one idle reader thread", unit: "us", runs: runs, synchronizeUs)
    report("call(afterGracePeriod:) enqueue", unit: "ns", runs: runs) { callFigures().enqueueNs }
    report("call end-to-end throughput", unit: "M callbacks/s", runs: runs) { callFigures().millionsPerSecond }
    report("read-side throughput, 2 threads / 1 thread", unit: "x", runs: runs, readScaling)
    report("baseline: private-counter loop, 2 thr / 1", unit: "x", runs: runs, baselineScaling)
    report("readBegin+readRetry pair", unit: "ns", runs: runs, readBeginRetryNs)
    report("interval query, 10^3 subscriptions", unit: "ns", runs: runs) { intervalQueryNs(count: 1_000) }
    report("interval query, 10^5 subscriptions", unit: "ns", runs: runs) { intervalQueryNs(count: 100_000) }
    report("getUnlessZero+put (one thread)", unit: "ns", runs: runs, speculativeRefNs)
}

func report(_ name: String, unit: String, runs: Int, _ measure: () -> Double) {
    var values: [Double] = []
    for _ in 0..<runs { values.append(measure()) }
    let shown = values.map { formatFixed($0, 2) }.joined(separator: " ")
    let padded = name + String(repeating: " ", count: max(1, 46 - name.count))
    print("\(padded)\(formatFixed(median(values), 2)) \(unit)   (runs: \(shown))")
}

func formatFixed(_ value: Double, _ precision: Int) -> String {
    var scale = 1.0
    for _ in 0..<precision { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    var s = "\(rounded)"
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if decimals < precision { s += String(repeating: "0", count: precision - decimals) }
    } else if precision > 0 {
        s += "." + String(repeating: "0", count: precision)
    }
    return s
}

// MARK: SRCU

func readLockUnlockNs() -> Double {
    let srcu = SRCUDomain()
    let n = 50_000_000
    srcu.readUnlock(srcu.readLock())  // first use: slot slow path
    let t0 = nowNanoseconds()
    for _ in 0..<n {
        let token = srcu.readLock()
        srcu.readUnlock(token)
    }
    return Double(nowNanoseconds() - t0) / Double(n)
}

func withReadLockNs() -> Double {
    let srcu = SRCUDomain()
    let n = 50_000_000
    var sum = 0
    let t0 = nowNanoseconds()
    for i in 0..<n { sum &+= srcu.withReadLock { i } }
    let ns = Double(nowNanoseconds() - t0) / Double(n)
    blackHole(sum)
    return ns
}

func synchronizeUs() -> Double {
    let srcu = SRCUDomain()
    let stop = Atomic<Bool>(false)
    let registered = Atomic<Bool>(false)
    let reader = startThread {
        srcu.readUnlock(srcu.readLock())  // owns a slot, then idles outside any section
        registered.store(true, ordering: .releasing)
        while !stop.load(ordering: .acquiring) { usleep(1000) }
    }
    while !registered.load(ordering: .acquiring) { usleep(100) }
    let n = 20_000
    let t0 = nowNanoseconds()
    for _ in 0..<n { try? srcu.synchronize() }
    let us = Double(nowNanoseconds() - t0) / Double(n) / 1000
    stop.store(true, ordering: .releasing)
    reader.join()
    return us
}

struct CallFigures { let enqueueNs: Double; let millionsPerSecond: Double }

func callFigures() -> CallFigures {
    let srcu = SRCUDomain()
    let ran = Atomic<Int>(0)
    srcu.call { }
    try? srcu.barrier()  // reclaim thread started
    let n = 1_000_000
    let t0 = nowNanoseconds()
    for _ in 0..<n { srcu.call { ran.wrappingAdd(1, ordering: .relaxed) } }
    let t1 = nowNanoseconds()
    try? srcu.barrier()
    let t2 = nowNanoseconds()
    return CallFigures(enqueueNs: Double(t1 - t0) / Double(n),
                       millionsPerSecond: Double(n) / (Double(t2 - t0) / 1e9) / 1e6)
}

/// Read sections per second on `threads` threads for a fixed time.
func readThroughput(threads: Int, srcu: SRCUDomain) -> Double {
    operationsPerSecond(threads: threads, seconds: 0.3) { _, running in
        var count = 0
        while running() {
            for _ in 0..<1000 {
                let token = srcu.readLock()
                srcu.readUnlock(token)
            }
            count += 1000
        }
        return count
    }
}

/// The machine's own scaling for a loop that shares nothing (calibrates `readScaling`: two
/// vCPUs that are SMT siblings on the host cannot reach 2x for any tight loop).
func privateLoopThroughput(threads: Int) -> Double {
    operationsPerSecond(threads: threads, seconds: 0.3) { _, running in
        var count = 0
        var sink = 0
        while running() {
            for i in 0..<1000 { sink &+= i; blackHoleInt(&sink) }
            count += 1000
        }
        return count
    }
}

@inline(never) func blackHoleInt(_ value: inout Int) { value &+= 1 }

func baselineScaling() -> Double {
    privateLoopThroughput(threads: 2) / privateLoopThroughput(threads: 1)
}

func readScaling() -> Double {
    let srcu = SRCUDomain()
    let one = readThroughput(threads: 1, srcu: srcu)
    let two = readThroughput(threads: 2, srcu: srcu)
    return two / one
}

// MARK: Intervals

func readBeginRetryNs() -> Double {
    let space = AddressSpace()
    guard let range = try? AddressRange(start: 0x10000, length: 0x1000),
          let sub = try? space.insertInterval(range, invalidate: { s, _, seq in s.setSequence(seq); return true })
    else { fatalError("setup") }
    let n = 5_000_000
    var retries = 0
    let t0 = nowNanoseconds()
    for _ in 0..<n {
        guard let seq = try? sub.readBegin() else { fatalError("readBegin outside any callback threw") }
        if sub.readRetry(seq) { retries += 1 }
    }
    let ns = Double(nowNanoseconds() - t0) / Double(n)
    blackHole(retries)
    try? sub.remove()
    return ns
}

func intervalQueryNs(count: Int) -> Double {
    let space = AddressSpace()
    var subs: [IntervalSubscription] = []
    for i in 0..<count {
        guard let r = try? AddressRange(start: UInt(i) * 0x10000, length: 0x8000),
              let sub = try? space.insertInterval(r, invalidate: { _, _, _ in true })
        else { fatalError("setup") }
        subs.append(sub)
    }
    var rng = UInt64(0x1234_5678)
    let n = 1_000_000
    var found = 0
    let t0 = nowNanoseconds()
    for _ in 0..<n {
        rng = rng &* 6364136223846793005 &+ 1442695040888963407
        let start = UInt(rng >> 33) % UInt(count) * 0x10000 + 0x4000
        guard let q = try? AddressRange(start: start, length: 0x2000) else { continue }
        found &+= space.countIntervals(overlapping: q)
    }
    let ns = Double(nowNanoseconds() - t0) / Double(n)
    blackHole(found)
    for sub in subs { try? sub.remove() }
    return ns
}

func speculativeRefNs() -> Double {
    final class Holder: Sendable { let refs = SpeculativeRefCount(1) }
    let holder = Holder()
    let n = 20_000_000
    let t0 = nowNanoseconds()
    for _ in 0..<n {
        if holder.refs.getUnlessZero() { _ = try? holder.refs.put() }
    }
    return Double(nowNanoseconds() - t0) / Double(n)
}
