import RDMAMemory
