/*
 * fuzz-frame.c — the partner link's reader (replica/frame.c, auth.c) on a byte stream
 * from anyone who connects: frames one after another, each header judged by
 * rep_frame_check before its length is trusted, its payload's checksum computed, then
 * the payload of a HELLO through rep_hello_parse and of an ACK through rep_ack_parse
 * (allowed to cover the last 8 MSG seqs seen), as link.c does.  The checksum's verdict is
 * ignored so the fuzzer reaches the parsers behind it (like fuzz-seg's IMG_CHECK_NOSUM).
 * A header the check accepts must have a length its reader may size a buffer from.
 * No locking: single-threaded.
 */
#include "rep-fuzz.h"

#define CTRL_MAX (sizeof(struct rep_ack) + REP_ACK_MAX_ENTS * sizeof(struct rep_ack_ent))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t last = 0;
	size_t off = 0;

	while (size - off >= sizeof(struct rep_hdr)) {
		struct rep_hdr h;
		char why[160];
		void *p;

		memcpy(&h, data + off, sizeof(h));
		off += sizeof(h);
		if (rep_frame_check(&h, why, sizeof(why)))
			return 0;
		if (h.len > REP_PAYLOAD_MAX || (h.kind != REP_K_MSG && h.len > CTRL_MAX) ||
		    (h.kind == REP_K_MSG && (!h.seq || h.seq > REP_SEQ_MAX)))
			abort();
		if (h.len > size - off)
			return 0; /* truncated */
		p = rf_copy(data + off, h.len);
		if (!p)
			return 0;
		off += h.len;
		(void)rep_frame_sum_ok(&h, p);
		if (h.kind == REP_K_HELLO)
			rf_hello(p, h.len);
		else if (h.kind == REP_K_ACK)
			rf_ack(p, h.len, last > 8 ? last - 8 : 0, last);
		else if (h.kind == REP_K_MSG && h.seq > last)
			last = h.seq;
		free(p);
	}
	return 0;
}
