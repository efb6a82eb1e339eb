/*
 * fuzz-open.c — a sealed frame from the wire (replica/seal.c rep_open), which anyone on
 * the path between the nodes can change: the input is a frame header and its wire bytes
 * (ciphertext and tag), opened under a fixed session's key.  What it promises: a frame
 * opens only when sealed, with its key state advanced by one frame (or moved to the next
 * key with REP_F_REKEY), and a failure leaves the key as it was.  Then a round trip: the
 * input's bytes sealed by the sending direction open in the receiving one, equal, and
 * with one bit flipped (a position the input picks) they do not.
 * No locking: single-threaded.
 */
#include <errno.h>

#include "rep-fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t key[REP_KEY_BYTES] = { 7 };
	struct rep_dir rx, tx = { 0 }, rx2 = { 0 }, other = { 0 }, before;
	unsigned char *p = NULL, *q = NULL;
	struct rep_hdr h;
	char why[160];
	size_t n;
	int rc;

	if (size < sizeof(h))
		return 0;
	rf_session(&rx, data, size);
	memcpy(&h, data, sizeof(h));
	n = size - sizeof(h);
	p = rf_copy(data + sizeof(h), n);
	if (!p)
		goto out;
	before = rx;
	/* the reader opens only what it read whole: len + tag bytes */
	if (h.len <= REP_PAYLOAD_MAX && h.len + (size_t)REP_TAG_BYTES == n) {
		rc = rep_open(&rx, &h, p, why, sizeof(why));
		if (rc < 0 && memcmp(&rx, &before, sizeof(rx)))
			abort();
		if (rc >= 0 && (!(h.flags & REP_F_SEALED) || h.sum || rx.ctr != 1 ||
				(rc == 1) != !!(h.flags & REP_F_REKEY)))
			abort();
	}
	free(p);
	p = NULL;
	/* the round trip */
	if (n > 65536)
		goto out;
	{
		static const char hi[] = "initiator hello", ha[] = "acceptor hello";
		unsigned cipher = rx.cipher;

		/* the initiator's sending key, and the acceptor's copy of it */
		if (rep_session_keys(&tx, &other, cipher, key, hi, sizeof(hi), ha, sizeof(ha)))
			abort();
		rep_dir_wipe(&other);
		if (rep_session_keys(&rx2, &other, cipher, key, hi, sizeof(hi), ha, sizeof(ha)))
			abort();
		rep_dir_wipe(&other);
	}
	p = malloc(n + REP_TAG_BYTES);
	q = malloc(n + REP_TAG_BYTES);
	if (!p || !q)
		goto out;
	rep_frame_fill(&h, REP_K_MSG, REP_TYPE_USER, 1, NULL, 0, n);
	rep_seal(&tx, REP_REKEY_BYTES, &h, p, data + sizeof(h));
	memcpy(q, p, n + REP_TAG_BYTES);
	if (n) {
		size_t bit = data[0] % (8 * (n + REP_TAG_BYTES));

		q[bit / 8] ^= (unsigned char)(1u << bit % 8);
		before = rx2;
		if (rep_open(&rx2, &h, q, why, sizeof(why)) != -EBADMSG ||
		    memcmp(&rx2, &before, sizeof(rx2)))
			abort();
	}
	if (rep_open(&rx2, &h, p, why, sizeof(why)) || memcmp(p, data + sizeof(h), n))
		abort();
out:
	free(p);
	free(q);
	rep_dir_wipe(&tx);
	rep_dir_wipe(&rx2);
	rep_dir_wipe(&rx);
	return 0;
}
