/* The UCP API ferry-backend-ucx binds (see build.rs for the allowlist). */
#include <ucp/api/ucp.h>
/* ucs_log_push_handler: UCX's log sent to standard error (safe.rs). */
#include <ucs/debug/log_def.h>
