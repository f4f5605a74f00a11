import CVerbs
#if canImport(Glibc)
import Glibc
#endif

/// A completion queue (`struct ibv_cq`): where finished work requests are reported.
///
/// `@unchecked Sendable`: the pointer is written once in `init` and destroyed only in
/// `deinit`; libibverbs serializes polling of one CQ from several threads in the provider.
public final class CompletionQueue: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<ibv_cq>
    public let context: DeviceContext
    public let capacity: Int32

    /// Creates a queue with room for at least `capacity` completions.
    public init(context: DeviceContext, capacity: Int32 = 256) throws {
        guard capacity > 0 else {
            throw VerbsError(call: "ibv_create_cq", argument: "cqe: \(capacity)", errno: .invalidArgument)
        }
        clearErrno()
        guard let cq = ibv_create_cq(context.pointer, capacity, nil, nil, 0) else {
            throw VerbsError.fromErrno("ibv_create_cq", argument: "cqe: \(capacity)")
        }
        pointer = cq
        self.context = context
        self.capacity = capacity
    }

    deinit { ibv_destroy_cq(pointer) }

    /// The most completions one `poll` takes.
    public static let maxPollEntries = 4096

    /// The completions ready now, at most `maxEntries` (`ibv_poll_cq`, never blocks).
    public func poll(maxEntries: Int = 16) throws -> [WorkCompletion] {
        guard (1...Self.maxPollEntries).contains(maxEntries) else {
            throw VerbsError(call: "ibv_poll_cq", argument: "num_entries: \(maxEntries)", errno: .invalidArgument,
                             detail: "must be 1...\(Self.maxPollEntries)")
        }
        var entries = [ibv_wc](repeating: ibv_wc(), count: maxEntries)
        let count = ibv_poll_cq(pointer, Int32(entries.count), &entries)
        guard count >= 0 else { throw VerbsError.fromReturn("ibv_poll_cq", count) }
        return entries.prefix(Int(count)).map(WorkCompletion.init)
    }

    /// Polls until `count` completions have arrived or `timeout` passes.
    ///
    /// Nothing in this package waits unbounded for the device: a lost completion becomes a
    /// `VerbsError` with ETIMEDOUT that says how many arrived, not a hang.
    public func waitForCompletions(_ count: Int, timeout: Duration = .seconds(10)) throws -> [WorkCompletion] {
        guard count >= 0 else {
            throw VerbsError(call: "ibv_poll_cq", argument: "expecting \(count) completions", errno: .invalidArgument,
                             detail: "the count must not be negative")
        }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var completions: [WorkCompletion] = []
        var idleRounds = 0
        while completions.count < count {
            let batch = try poll(maxEntries: min(count - completions.count, Self.maxPollEntries))
            completions += batch
            if !batch.isEmpty { idleRounds = 0; continue }
            guard ContinuousClock.now < deadline else {
                throw VerbsError(call: "ibv_poll_cq", argument: "expecting \(count) completions",
                                 errno: .timedOut,
                                 detail: "\(completions.count) arrived within \(timeout)")
            }
            // Spin briefly (completions on a real device take microseconds), then back off so
            // a slow emulated device does not cost a whole core.
            idleRounds += 1
            if idleRounds > 1000 { usleep(50) }
        }
        return completions
    }

    /// Waits for one completion with id `id` and checks it succeeded.
    ///
    /// - Throws: `VerbsError` naming the work request's status (e.g. IBV_WC_RETRY_EXC_ERR) when
    ///   it failed, or ETIMEDOUT when it did not complete in time.
    @discardableResult
    public func waitForSuccess(of id: UInt64, timeout: Duration = .seconds(10)) throws -> WorkCompletion {
        let completion = try waitForCompletions(1, timeout: timeout)[0]
        guard completion.id == id, completion.status == .success else {
            throw VerbsError(call: "ibv_poll_cq", argument: "wr_id: \(completion.id)",
                             detail: "work request completed with \(completion.status)"
                                 + (completion.id == id ? "" : " (expected wr_id \(id))"))
        }
        return completion
    }
}
