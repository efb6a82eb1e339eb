/*
 * fuzz-frame.c — the partner link's reader (replica/frame.c, auth.c) on the byte stream
 * of one connection from anyone who connects, as link.c reads it: frames one after
 * another, each header judged by rep_frame_check and against the kinds the connection
 * takes at that point (REP_KINDS_*: HELLO, then AUTH, then MSG/ACK/HB) before its length
 * is trusted; its payload's checksum computed; the HELLO through rep_hello_parse (as
 * either role), each MSG seq through rep_msg_seq_check, each ACK through rep_ack_parse
 * against what "we" sent (seqs 1..64) and acknowledged so far.  The checksum's and the
 * AUTH MAC's verdicts are ignored so the fuzzer reaches what lies behind them (like
 * fuzz-seg's IMG_CHECK_NOSUM); a sealed frame (flags) is read with its tag and opened
 * (rep_open) under a fixed session's key, its verdict ignored too.  The first refusal ends the connection, as in link.c.
 * What the checks accept must keep their promises (rep-fuzz.h; here: a length the reader
 * may size a buffer from, MSG seqs from the HELLO's on and one by one).
 * No locking: single-threaded.
 */
#include "rep-fuzz.h"

#define CTRL_MAX (sizeof(struct rep_ack) + REP_ACK_MAX_ENTS * sizeof(struct rep_ack_ent))
#define SENT 64 /* the seqs "we" sent on this connection: 1..SENT */

/* The peer's HELLO, as the side of either role: its first MSG seq, or 0 if refused. */
static uint64_t hello_first(const void *p, size_t len)
{
	for (unsigned role = REP_ROLE_INITIATOR; role <= REP_ROLE_ACCEPTOR; role++) {
		struct rep_hello h;
		char why[160];

		if (!rep_hello_parse(p, len, role, "a", &h, why, sizeof(why)))
			return h.next_seq;
	}
	return 0;
}

/* One frame's payload at this point of the connection; false ends it. */
static bool take(const struct rep_hdr *h, const void *p, unsigned *kinds, uint64_t *first,
		 uint64_t *next, uint64_t *acked)
{
	static struct rep_ack_parsed a;
	char why[160];
	uint64_t was = *next;

	switch (h->kind) {
	case REP_K_HELLO:
		rf_hello(p, h->len);
		*first = hello_first(p, h->len);
		*kinds = REP_KINDS_AUTH;
		return *first != 0;
	case REP_K_AUTH:
		*kinds = REP_KINDS_UP;
		return true;
	case REP_K_MSG:
		if (rep_msg_seq_check(*first, next, h->seq, why, sizeof(why)))
			return false;
		if (h->seq < *first || (was && h->seq != was) || *next != h->seq + 1)
			abort();
		return true;
	case REP_K_ACK:
		rf_ack(p, h->len, *acked, SENT);
		if (rep_ack_parse(p, h->len, *acked, SENT, &a, why, sizeof(why)))
			return false;
		*acked = a.upto;
		return true;
	default:
		return true; /* a heartbeat */
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned kinds = REP_KINDS_HELLO;
	uint64_t first = 0, next = 0, acked = 0;
	struct rep_dir rx;
	size_t off = 0, wl;

	rf_session(&rx, data, size);
	while (size - off >= sizeof(struct rep_hdr)) {
		struct rep_hdr h;
		char why[160];
		bool go;
		void *p;

		memcpy(&h, data + off, sizeof(h));
		off += sizeof(h);
		if (rep_frame_check(&h, why, sizeof(why)) || !(kinds & 1u << h.kind))
			goto out;
		if (h.len > REP_PAYLOAD_MAX || (h.kind != REP_K_MSG && h.len > CTRL_MAX) ||
		    (h.kind == REP_K_MSG && (!h.seq || h.seq > REP_SEQ_MAX)))
			abort();
		/* a sealed frame (after the AUTHs) has its tag after the payload; it is opened
		 * with the session's key, the verdict ignored like the checksum's */
		wl = h.len + (h.flags & REP_F_SEALED ? REP_TAG_BYTES : 0);
		if (wl > size - off)
			goto out; /* truncated */
		p = rf_copy(data + off, wl);
		if (!p)
			goto out;
		off += wl;
		if (h.flags & REP_F_SEALED)
			(void)rep_open(&rx, &h, p, why, sizeof(why));
		else
			(void)rep_frame_sum_ok(&h, p);
		go = take(&h, p, &kinds, &first, &next, &acked);
		free(p);
		if (!go)
			break;
	}
out:
	rep_dir_wipe(&rx);
	return 0;
}
