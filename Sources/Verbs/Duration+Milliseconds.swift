extension Duration {
    /// Whole milliseconds for C calls that take an `Int32` timeout (`poll`, `rdma_resolve_*`):
    /// negative durations are 0, durations past `Int32.max` ms are `Int32.max`. Computed with
    /// checked arithmetic, so no caller-given duration can trap.
    var clampedMilliseconds: Int32 {
        let (seconds, attoseconds) = components
        if seconds < 0 { return 0 }
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        let (total, carry) = whole.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
        if overflow || carry { return .max }
        return Int32(clamping: total)
    }
}
