extension QueuePair {
    /// Connects the QP to itself: its RDMA WRITEs and READs then target memory registered in
    /// this process, which is how one program exercises a device end to end with no peer.
    public func connectToItself(options: ConnectOptions = .init()) throws {
        try connect(to: endpoint(port: options.port, gidIndex: Int32(options.gidIndex)), options: options)
    }
}
