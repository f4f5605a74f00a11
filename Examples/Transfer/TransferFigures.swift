import Foundation

/// What one run measured, and how it prints.
struct TransferFigures {
    var registration: RegistrationChoice
    var buffers: BufferChoice
    var bytes: Int
    var messages: Int
    var messageSize: Int
    var elapsed: Duration
    var registrationTime: Duration
    /// Time in the calls that registered with the device: every plain one, the cache's misses.
    var deviceRegistrationTime: Duration
    var deviceRegistrations: Int
    var registrations: Int
    var hits: Int
    var invalidations: Int
    var remaps: Int
    var corruptCredits: Int
    var verdict: TransferVerdict

    var seconds: Double { Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18 }
    var megabytesPerSecond: Double { Double(bytes) / 1e6 / seconds }
    var messagesPerSecond: Double { Double(messages) / seconds }
    var registrationsPerSecond: Double { Double(registrations) / seconds }

    /// Every message arrived and matched its CRC-32, by the server's count and by the credits.
    var verified: Bool {
        verdict.mismatchedMessages == 0 && corruptCredits == 0 && verdict.verifiedMessages == UInt64(messages)
            && verdict.verifiedBytes == UInt64(bytes)
    }

    var summary: String {
        let registrationMicroseconds = Self.microseconds(registrationTime)
        var lines = [
            "[\(registration.rawValue)] \(ByteCount.format(bytes)) in \(messages) messages of \(ByteCount.format(messageSize)) "
                + "(\(buffers.rawValue) buffers) in \(String(format: "%.2f", seconds)) s: "
                + "\(String(format: "%.1f", megabytesPerSecond)) MB/s, \(String(format: "%.0f", messagesPerSecond)) messages/s",
            "[\(registration.rawValue)]   ibv_reg_mr: \(registrations) (\(String(format: "%.1f", registrationsPerSecond))/s), "
                + "cache hits: \(hits), invalidations: \(invalidations)"
                + (remaps > 0 ? ", pool remapped \(remaps) times" : "")
                + ", registering: \(String(format: "%.1f", registrationMicroseconds / Double(max(messages, 1)))) µs/message"
                + " (\(String(format: "%.0f", Self.microseconds(deviceRegistrationTime) / Double(max(deviceRegistrations, 1)))) µs "
                + "each registration with the device)",
            "[\(registration.rawValue)]   server: \(verdict.verifiedMessages) of \(messages) messages verified "
                + "(\(ByteCount.format(Int(verdict.verifiedBytes))))"
                + (verified ? ", every byte matches" : ", \(verdict.mismatchedMessages) CORRUPT"),
        ]
        if corruptCredits > 0 { lines.append("[\(registration.rawValue)]   \(corruptCredits) messages failed their CRC-32") }
        return lines.joined(separator: "\nclient: ")
    }

    static func microseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) * 1e-12
    }

    /// The cache's runs against the plain runs, medians of the rounds. The headline is what the
    /// cache saved (registrations and the time they take, which is what it is for); the
    /// throughput follows. On rxe the data path is emulated in software and costs far more than
    /// on a NIC, where registering a buffer costs about as much as sending it: there the time
    /// saved shows in throughput directly, here it is a small share of it.
    static func comparison(_ runs: [TransferFigures]) -> String {
        func median(_ choice: RegistrationChoice, _ value: (TransferFigures) -> Double) -> Double {
            let values = runs.filter { $0.registration == choice }.map(value).sorted()
            return values.isEmpty ? .nan : values[values.count / 2]
        }
        let cachedRate = median(.cache, \.megabytesPerSecond), plainRate = median(.plain, \.megabytesPerSecond)
        let cachedCount = median(.cache) { Double($0.registrations) }, plainCount = median(.plain) { Double($0.registrations) }
        let cachedTime = median(.cache) { microseconds($0.registrationTime) }
        let plainTime = median(.plain) { microseconds($0.registrationTime) }
        let missTime = median(.cache) { microseconds($0.deviceRegistrationTime) / Double(max($0.deviceRegistrations, 1)) }
        let plainRegistrationTime = median(.plain) { microseconds($0.deviceRegistrationTime) / Double(max($0.deviceRegistrations, 1)) }
        let messages = Double(max(runs.first?.messages ?? 1, 1))
        let rounds = runs.count / 2
        let saved = "the cache saved \(Int(plainCount - cachedCount)) of \(Int(plainCount)) ibv_reg_mr calls and "
            + "\(String(format: "%.1f", (plainTime - cachedTime) / 1000)) of \(String(format: "%.1f", plainTime / 1000)) ms "
            + "registering (\(String(format: "%.1f", cachedTime / messages)) against \(String(format: "%.1f", plainTime / messages)) µs "
            + "a message, \(String(format: "%.1f", plainTime / max(cachedTime, 1)))x less; a miss took "
            + "\(String(format: "%.0f", missTime)) µs, a plain ibv_reg_mr \(String(format: "%.0f", plainRegistrationTime)) µs)"
        let throughput = "throughput \(String(format: "%.1f", cachedRate)) against \(String(format: "%.1f", plainRate)) MB/s "
            + "(\(String(format: "%.2f", cachedRate / plainRate))x; rxe emulates the data path in software, so registering is a "
            + "small share of a message's time here)"
        return "cache vs plain" + (rounds > 1 ? " (medians of \(rounds) rounds)" : "") + ": " + saved + "; " + throughput
    }
}

/// A progress line every two seconds on long runs (none on short ones).
struct ProgressLine {
    let label: String
    let total: Int
    private let clock = ContinuousClock()
    private let start: ContinuousClock.Instant
    private var last: ContinuousClock.Instant

    init(label: String, total: Int) {
        self.label = label
        self.total = total
        start = clock.now
        last = start
    }

    mutating func update(done: Int) {
        let now = clock.now
        guard now - last >= .seconds(2), done < total else { return }
        last = now
        let seconds = Double((now - start).components.seconds) + Double((now - start).components.attoseconds) * 1e-18
        print("\(label) \(ByteCount.format(done)) of \(ByteCount.format(total)) "
              + "(\(100 * done / max(total, 1))%), \(String(format: "%.1f", Double(done) / 1e6 / seconds)) MB/s")
    }
}
