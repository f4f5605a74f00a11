import Testing

/// Every test that needs the real device, run one at a time: they share one device, and the
/// leak checks read its global resource counts.
@Suite(.serialized, .enabled(if: Rxe.isAvailable, Rxe.skipReason))
struct RxeIntegration {}
