extension AddressSpace {
    /// This process's address space (the kernel's `current->mm`), with its SRCU domain: one per
    /// process, shared by every registration cache, by the process's userfaultfd monitor
    /// (`MemoryMonitor.shared`) and by every other source of invalidations, as the kernel keeps
    /// one `mm_struct` per process. Made on first use, never released.
    public static let process = AddressSpace()
}
