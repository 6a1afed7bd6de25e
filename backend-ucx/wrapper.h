/* The UCP API ferry-backend-ucx binds (see build.rs for the allowlist). */
#include <ucp/api/ucp.h>
