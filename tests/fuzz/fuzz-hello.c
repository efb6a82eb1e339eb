/*
 * fuzz-hello.c — the handshake's first message (replica/auth.c rep_hello_parse), which
 * anyone who connects to the link's port may send before proving anything.  The input is
 * the HELLO payload; both roles are tried (rep-fuzz.h: what an accepted one promises).
 * No locking: single-threaded.
 */
#include "rep-fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	void *p = rf_copy(data, size);

	if (p)
		rf_hello(p, size);
	free(p);
	return 0;
}
