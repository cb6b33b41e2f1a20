/* Version and error strings. */
#include "bnnpi.h"

int bnn_abi_version(void) { return BNN_ABI_VERSION; }

const char *bnn_error_string(int code) {
  switch (code) {
    case BNN_OK: return "ok";
    case BNN_ERR_SIZE: return "bad size (negative, zero where not allowed, or inconsistent)";
    case BNN_ERR_NULL: return "NULL buffer";
    case BNN_ERR_OVERFLOW: return "sizes overflow";
    case BNN_ERR_NOMEM: return "out of memory";
    case BNN_ERR_ARG: return "bad argument";
    case BNN_ERR_PADDING: return "packed weights have nonzero padding bits";
    default: return "unknown error";
  }
}
