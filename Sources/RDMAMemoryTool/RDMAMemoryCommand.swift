import ArgumentParser

/// `rdmamemory`: what a user runs first when registrations misbehave, so that the answer to
/// "which device, which monitor, which limits" comes from the library itself, not from guesses.
@main
struct RDMAMemoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rdmamemory",
        abstract: "Inspect RDMA devices and how RDMAMemory will see memory changes in this process; prove the cache on a device.",
        subcommands: [InfoCommand.self, CheckCommand.self])
}
