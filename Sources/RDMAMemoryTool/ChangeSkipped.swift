/// Why a change could not be made in this process (not a failure of the cache): the row says so.
struct ChangeSkipped: Error, Equatable {
    var reason: String
    /// True when another attempt may succeed (malloc moved the break once; it rarely does twice).
    var retryable = false
}
