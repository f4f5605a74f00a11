import NotifierEngine

extension MemoryMonitor {
    /// The process's monitor over `AddressSpace.process`, started on first use: its one
    /// userfaultfd monitor. Two monitors in one process would fight over the same granules
    /// (the second gets EBUSY and silently watches nothing), so every cache and every other
    /// user of the process's memory shares this one. Never shut down. It keeps up to 64 granules
    /// registered after their last buffer went (`Configuration.idleGranules`): caches come and
    /// go, buffers are freed and allocated again, and their next misses there ask the kernel
    /// nothing.
    public static let shared = MemoryMonitor(space: .process, configuration: .init(idleGranules: sharedIdleGranules))

    /// Idle granules the process-wide monitor keeps (128 MiB of address space at 2 MiB each).
    public static let sharedIdleGranules = 64
}
