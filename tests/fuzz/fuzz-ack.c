/*
 * fuzz-ack.c — an authenticated peer's acknowledgements (replica/frame.c rep_ack_parse).
 * The input is two little-endian u64, the seq acknowledged so far and the highest sent
 * (the link's state the ACK is judged against), then the ACK payload (rep-fuzz.h: what
 * an accepted one promises).
 * No locking: single-threaded.
 */
#include "rep-fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t acked, sent;
	void *p;

	if (size < 2 * sizeof(uint64_t))
		return 0;
	memcpy(&acked, data, sizeof(acked));
	memcpy(&sent, data + sizeof(acked), sizeof(sent));
	p = rf_copy(data + 2 * sizeof(uint64_t), size - 2 * sizeof(uint64_t));
	if (p)
		rf_ack(p, size - 2 * sizeof(uint64_t), acked, sent);
	free(p);
	return 0;
}
