import ArgumentParser

/// `rdma-transfer`: a server and a client that move a data set over rdma_cm with RDMA WRITEs,
/// the server verifying every message, the client registering its churning buffers through
/// the registration cache or once per message, to compare the two.
@main
struct TransferCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rdma-transfer",
        abstract: "Send a data set over RDMA (rdma_cm, RC, RDMA WRITE with immediate) and verify every byte.",
        discussion: """
            Start the server on one host, then the client on the other:
              rdma-transfer server --address fe80::ff:fe00:a01%veth0 --connections 2
              rdma-transfer client --server fe80::ff:fe00:a01%veth1 --size 64MiB
            """,
        subcommands: [ServerCommand.self, ClientCommand.self])
}

/// A message for the terminal, prefixed with the role so two interleaved outputs stay readable.
func say(_ role: String, _ text: String) {
    print("\(role): \(text)")
}

extension RegistrationChoice: ExpressibleByArgument {}
extension BufferChoice: ExpressibleByArgument {}

/// `--registration`: one way, or both one after the other (cache first) for the comparison.
enum RegistrationRuns: String, CaseIterable, ExpressibleByArgument {
    case cache, plain, both

    var choices: [RegistrationChoice] {
        switch self {
        case .cache: [.cache]
        case .plain: [.plain]
        case .both: [.cache, .plain]
        }
    }
}
