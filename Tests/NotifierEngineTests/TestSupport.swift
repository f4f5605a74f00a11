import Synchronization
#if canImport(Glibc)
import Glibc
#endif
@testable import NotifierEngine
import SharedTestSupport

func sleepMicroseconds(_ us: Int) { usleep(UInt32(us)) }


/// Stress configuration from the environment: MMU_STRESS_SECONDS (default 1),
/// MMU_STRESS_SEED (default: random, printed so the run can be replayed).
struct StressConfig {
    let seconds: Double
    let seed: UInt64

    init(_ name: String) {
        let env = ProcessInfoLite.environment
        seconds = env["MMU_STRESS_SECONDS"].flatMap(Double.init) ?? 1.0
        seed = env["MMU_STRESS_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
        print("[\(name)] seed \(seed) (replay: MMU_STRESS_SEED=\(seed)) for \(seconds)s")
    }

    var deadline: UInt64 { monotonicNanoseconds() + UInt64(seconds * 1e9) }

    func random(thread: Int) -> SeededRandom {
        SeededRandom(seed: seed &+ UInt64(thread) &* 0x9E37_79B9)
    }
}

enum ProcessInfoLite {
    static var environment: [String: String] {
        var result: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") {
                result[String(s[..<eq])] = String(s[s.index(after: eq)...])
            }
            p += 1
        }
        return result
    }
}

/// Fails loudly (with the seed) if a stress test does not finish: a deadlock would otherwise
/// hang the run without saying which schedule did it.
final class Watchdog: Sendable {
    private let done = Atomic<Bool>(false)
    init(name: String, seed: UInt64, limitSeconds: Double) {
        let deadline = monotonicNanoseconds() + UInt64(limitSeconds * 1e9)
        spawn { [self] in
            while !done.load(ordering: .acquiring) {
                if monotonicNanoseconds() > deadline {
                    fatalError("[\(name)] no progress after \(limitSeconds)s: deadlock? seed \(seed)")
                }
                usleep(20_000)
            }
        }.detach()
    }
    func finish() { done.store(true, ordering: .releasing) }
}

/// Counts violations and keeps the first description.
final class Violations: Sendable {
    private let state = Locked<(count: Int, first: String?)>((0, nil))
    func record(_ what: @autoclosure () -> String) {
        let text = what()
        state.withLock { s in
            s.count += 1
            if s.first == nil { s.first = text }
        }
    }
    var count: Int { state.withLock { $0.count } }
    var first: String { state.withLock { $0.first ?? "none" } }
}

func range(_ start: UInt, _ length: UInt) -> AddressRange {
    // Test ranges are chosen small; a bad one is a test bug.
    (try? AddressRange(start: start, length: length)) ?? AddressRange(unchecked: 0, last: 0)
}

/// A subscription that counts its calls and sets the sequence, as an owner's callback must.
final class CountingSubscription: IntervalSubscription, @unchecked Sendable {
    // @unchecked: adds one atomic to a base class whose comment proves the rest.
    let calls = Atomic<Int>(0)
    override func invalidate(_ invalidation: InvalidationRange, currentSequence: UInt64) -> Bool {
        setSequence(currentSequence)
        calls.add(1, ordering: .relaxed)
        return true
    }
}
