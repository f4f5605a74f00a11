// What users import: `import RDMAMemory` brings every layer they need.
@_exported import NotifierEngine
@_exported import Monitors
@_exported import MemoryRegistration
@_exported import Verbs
