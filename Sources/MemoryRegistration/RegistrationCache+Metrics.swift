import Metrics

extension RegistrationCache {
    /// Publishes `statistics` through swift-metrics, to whatever backend the application
    /// bootstrapped (Prometheus, StatsD...), as gauges named `<prefix>_<statistic>`. Call it
    /// periodically: the hit path itself never touches metrics (that would write shared memory
    /// on every hit).
    public func recordMetrics(prefix: String = "rdmamemory_cache") {
        let current = statistics
        let values: [(String, Int)] = [
            ("hits", current.hits), ("scoped_hits", current.scopedHits), ("misses", current.misses),
            ("uncached", current.uncached),
            ("raced_invalidations", current.racedInvalidations), ("invalidations", current.invalidations),
            ("evictions", current.evictions), ("revoked_while_held", current.revokedWhileHeld),
            ("registered_regions", current.registeredRegions), ("pinned_bytes", current.pinnedBytes),
            ("cached_regions", current.cachedRegions),
            ("teardowns_waiting_for_grace_period", current.teardownsWaitingForGracePeriod),
            ("failed_deregistrations", current.failedDeregistrations),
        ]
        for (name, value) in values { Gauge(label: "\(prefix)_\(name)").record(value) }
    }
}
