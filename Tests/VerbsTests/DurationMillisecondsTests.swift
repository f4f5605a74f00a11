import Testing
@testable import Verbs

@Suite struct DurationMillisecondsTests {
    @Test("timeouts of any size become whole milliseconds without trapping")
    func clamped() {
        #expect(Duration.seconds(2).clampedMilliseconds == 2000)
        #expect(Duration.milliseconds(1500).clampedMilliseconds == 1500)
        #expect(Duration.seconds(-3).clampedMilliseconds == 0)
        #expect(Duration.seconds(Int64.max).clampedMilliseconds == Int32.max)
        #expect(Duration.seconds(Int64.max / 1000).clampedMilliseconds == Int32.max)
        #expect(Duration.seconds(Int64.min).clampedMilliseconds == 0)
    }
}
