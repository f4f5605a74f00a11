import MemoryMapping
import Metrics
import MetricsTestKit
import Testing
@testable import MemoryRegistration

@Suite struct CacheMetricsTests {
    /// The metrics system is bootstrapped once per process; only this suite uses it.
    static let metrics: TestMetrics = {
        let metrics = TestMetrics()
        MetricsSystem.bootstrap(metrics)
        return metrics
    }()

    @Test func statisticsReachTheMetricsBackend() throws {
        let metrics = Self.metrics
        let cache = RegistrationCache(registrar: NullRegistrar())
        defer { cache.shutdown() }
        let buffer = try AnonymousMapping(length: 8192)
        try cache.register(buffer.bytes, access: .rdma).release()
        try cache.register(buffer.bytes, access: .rdma).release()
        cache.recordMetrics(prefix: "test_cache")
        #expect(try metrics.expectGauge("test_cache_hits").lastValue == 1)
        #expect(try metrics.expectGauge("test_cache_misses").lastValue == 1)
        #expect(try metrics.expectGauge("test_cache_pinned_bytes").lastValue == 8192)
    }
}
