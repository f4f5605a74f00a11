import BenchmarkSupport
import MemoryMapping
import MemoryRegistration
import Verbs

/// What the cache saves on a real device: `ibv_reg_mr` + `ibv_dereg_mr` for every use, against
/// a cached `register` + `release` (a hit), on rxe.
struct DeviceFigures {
    var device: String
    var scale: Int

    func all() throws -> [FigureResult] {
        let context = try DeviceContext(name: device)
        let domain = try ProtectionDomain(context: context)
        let cache = RegistrationCache(protectionDomain: domain)
        defer { cache.shutdown() }
        var results: [FigureResult] = []
        for size in [4096, 65536, 1 << 20] {
            let buffer = try AnonymousMapping(length: size)
            let iterations = max(20, (size >= 1 << 20 ? 200 : 2000) / scale)
            let uncached = try timed(iterations) {
                try domain.registerMemory(buffer.bytes, access: .rdma).deregister()
            }
            try cache.register(buffer.bytes, access: .rdma).release()
            let cached = try timed(iterations * 100) { try cache.register(buffer.bytes, access: .rdma).release() }
            results.append(FigureResult(peer: "rdmamemory-rxe", figure: "uncached_reg_dereg", parameters: ["size": size],
                                        value: uncached, unit: "ns_per_op"))
            results.append(FigureResult(peer: "rdmamemory-rxe", figure: "cached_register_release", parameters: ["size": size],
                                        value: cached, unit: "ns_per_op"))
        }
        return results
    }

    private func timed(_ iterations: Int, _ body: () throws -> Void) rethrows -> Double {
        let start = nowNanoseconds()
        for _ in 0..<iterations { try body() }
        return Double(nowNanoseconds() - start) / Double(iterations)
    }
}
