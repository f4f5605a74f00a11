import MMUNotifier

extension MemoryMonitor {
    /// The process's monitor over `AddressSpace.process`, started on first use: its one
    /// userfaultfd monitor. Two monitors in one process would fight over the same granules
    /// (the second gets EBUSY and silently watches nothing), so every cache and every other
    /// user of the process's memory shares this one. Never shut down.
    public static let shared = MemoryMonitor(space: .process)
}
