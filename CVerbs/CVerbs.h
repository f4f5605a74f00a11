// libibverbs and librdmacm as Swift sees them (rdma-core 44, Debian 12).
#pragma once
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>

// `ibv_query_port` is a macro over `___ibv_query_port` in rdma-core's header; the plain symbol
// Swift would import is the old compat ABI (a smaller struct ibv_port_attr). Calling it from C
// here expands the macro, so Swift gets the current ABI.
static inline int cverbs_query_port(struct ibv_context *context, uint8_t port,
                                    struct ibv_port_attr *attributes) {
    return ibv_query_port(context, port, attributes);
}
